;; The CPU backend's float64 matrix product (lib/backends/cpu/matmul.ts), in WebAssembly with
;; 128-bit SIMD: two float64 lanes, each a different output column.
;;
;; gemm(a, b, out, m, n, k), byte addresses in this module's memory, m and n multiples of 4:
;;   out[i·n + j] = Σ_{p = 0 .. k−1} a[i·k + p] · b[(j / 4)·4k + 4p + j % 4]
;; a is m×k row-major; b holds the n columns as panels of four, each panel k rows of four.
;;
;; Every output is summed in order of p from 0, with a separate multiply and add per term and
;; one accumulator: bit for bit the sums of the plain loop. A 4×4 block of outputs takes eight
;; two-lane accumulators, so each step loads two vectors of b and four values of a for sixteen
;; multiply-adds. Rows go in bands of 64 so a band of a stays in cache while every panel of b
;; passes over it.
(module
  (memory (export "memory") 1)
  (func (export "gemm")
    (param $a i32) (param $b i32) (param $out i32) (param $m i32) (param $n i32) (param $k i32)
    (local $band i32) (local $bandEnd i32) (local $j i32) (local $i i32)
    (local $ap i32) (local $aEnd i32) (local $bp i32) (local $o i32)
    (local $rowBytes i32) (local $outRowBytes i32)
    (local $c00 v128) (local $c01 v128) (local $c10 v128) (local $c11 v128)
    (local $c20 v128) (local $c21 v128) (local $c30 v128) (local $c31 v128)
    (local $b0 v128) (local $b1 v128) (local $x v128)
    (local.set $rowBytes (i32.shl (local.get $k) (i32.const 3)))
    (local.set $outRowBytes (i32.shl (local.get $n) (i32.const 3)))
    (local.set $band (i32.const 0))
    (block $bandsDone
      (loop $bands
        (br_if $bandsDone (i32.ge_u (local.get $band) (local.get $m)))
        (local.set $bandEnd (i32.add (local.get $band) (i32.const 64)))
        (if (i32.gt_u (local.get $bandEnd) (local.get $m))
          (then (local.set $bandEnd (local.get $m))))
        ;; Each panel of four columns ...
        (local.set $j (i32.const 0))
        (block $panelsDone
          (loop $panels
            (br_if $panelsDone (i32.ge_u (local.get $j) (local.get $n)))
            ;; ... against each four rows of the band.
            (local.set $i (local.get $band))
            (block $rowsDone
              (loop $rows
                (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $bandEnd)))
                (local.set $c00 (v128.const i64x2 0 0))
                (local.set $c01 (v128.const i64x2 0 0))
                (local.set $c10 (v128.const i64x2 0 0))
                (local.set $c11 (v128.const i64x2 0 0))
                (local.set $c20 (v128.const i64x2 0 0))
                (local.set $c21 (v128.const i64x2 0 0))
                (local.set $c30 (v128.const i64x2 0 0))
                (local.set $c31 (v128.const i64x2 0 0))
                (local.set $ap
                  (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $rowBytes))))
                (local.set $aEnd (i32.add (local.get $ap) (local.get $rowBytes)))
                ;; Panel j / 4 starts at 4k·(j / 4) values: j·k·8 bytes.
                (local.set $bp
                  (i32.add (local.get $b) (i32.mul (local.get $j) (local.get $rowBytes))))
                (block $stepsDone
                  (loop $steps
                    (br_if $stepsDone (i32.ge_u (local.get $ap) (local.get $aEnd)))
                    (local.set $b0 (v128.load (local.get $bp)))
                    (local.set $b1 (v128.load offset=16 (local.get $bp)))
                    (local.set $x (f64x2.splat (f64.load (local.get $ap))))
                    (local.set $c00
                      (f64x2.add (local.get $c00) (f64x2.mul (local.get $x) (local.get $b0))))
                    (local.set $c01
                      (f64x2.add (local.get $c01) (f64x2.mul (local.get $x) (local.get $b1))))
                    (local.set $x (f64x2.splat
                      (f64.load (i32.add (local.get $ap) (local.get $rowBytes)))))
                    (local.set $c10
                      (f64x2.add (local.get $c10) (f64x2.mul (local.get $x) (local.get $b0))))
                    (local.set $c11
                      (f64x2.add (local.get $c11) (f64x2.mul (local.get $x) (local.get $b1))))
                    (local.set $x (f64x2.splat (f64.load (i32.add (local.get $ap)
                      (i32.shl (local.get $rowBytes) (i32.const 1))))))
                    (local.set $c20
                      (f64x2.add (local.get $c20) (f64x2.mul (local.get $x) (local.get $b0))))
                    (local.set $c21
                      (f64x2.add (local.get $c21) (f64x2.mul (local.get $x) (local.get $b1))))
                    (local.set $x (f64x2.splat (f64.load (i32.add (local.get $ap)
                      (i32.mul (local.get $rowBytes) (i32.const 3))))))
                    (local.set $c30
                      (f64x2.add (local.get $c30) (f64x2.mul (local.get $x) (local.get $b0))))
                    (local.set $c31
                      (f64x2.add (local.get $c31) (f64x2.mul (local.get $x) (local.get $b1))))
                    (local.set $ap (i32.add (local.get $ap) (i32.const 8)))
                    (local.set $bp (i32.add (local.get $bp) (i32.const 32)))
                    (br $steps)))
                (local.set $o (i32.add (local.get $out) (i32.shl
                  (i32.add (i32.mul (local.get $i) (local.get $n)) (local.get $j)) (i32.const 3))))
                (v128.store (local.get $o) (local.get $c00))
                (v128.store offset=16 (local.get $o) (local.get $c01))
                (local.set $o (i32.add (local.get $o) (local.get $outRowBytes)))
                (v128.store (local.get $o) (local.get $c10))
                (v128.store offset=16 (local.get $o) (local.get $c11))
                (local.set $o (i32.add (local.get $o) (local.get $outRowBytes)))
                (v128.store (local.get $o) (local.get $c20))
                (v128.store offset=16 (local.get $o) (local.get $c21))
                (local.set $o (i32.add (local.get $o) (local.get $outRowBytes)))
                (v128.store (local.get $o) (local.get $c30))
                (v128.store offset=16 (local.get $o) (local.get $c31))
                (local.set $i (i32.add (local.get $i) (i32.const 4)))
                (br $rows)))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $panels)))
        (local.set $band (local.get $bandEnd))
        (br $bands))))
  ;; gemv(a, b, out, n, k), byte addresses, n a multiple of 4: one row of a product,
  ;;   out[j] = Σ_{p = 0 .. k−1} a[p] · b[(j / 4)·4k + 4p + j % 4],
  ;; where b holds the n columns as panels of four float32 values, each panel k rows of four: a
  ;; layer's weight, kept in this memory between calls (lib/backends/cpu/gemm_wasm.ts keeps only
  ;; weights that float32 holds exactly). Each pair of values is widened to float64 (exactly) and
  ;; every output summed in order of p, with a separate multiply and add per term: bit for bit
  ;; the plain loop's sums, reading half the bytes of float64 panels. Four panels at a time
  ;; (eight two-lane accumulators, enough adds in flight to hide their latency), then one.
  (func (export "gemv")
    (param $a i32) (param $b i32) (param $out i32) (param $n i32) (param $k i32)
    (local $j i32) (local $ap i32) (local $aEnd i32) (local $bp i32) (local $panel i32)
    (local $o i32)
    (local $c0 v128) (local $c1 v128) (local $c2 v128) (local $c3 v128)
    (local $c4 v128) (local $c5 v128) (local $c6 v128) (local $c7 v128) (local $x v128)
    ;; A panel is k rows of 16 bytes.
    (local.set $panel (i32.shl (local.get $k) (i32.const 4)))
    (local.set $aEnd (i32.add (local.get $a) (i32.shl (local.get $k) (i32.const 3))))
    (local.set $j (i32.const 0))
    (block $fourDone
      (loop $four
        (br_if $fourDone (i32.gt_u (i32.add (local.get $j) (i32.const 16)) (local.get $n)))
        (local.set $c0 (v128.const i64x2 0 0))
        (local.set $c1 (v128.const i64x2 0 0))
        (local.set $c2 (v128.const i64x2 0 0))
        (local.set $c3 (v128.const i64x2 0 0))
        (local.set $c4 (v128.const i64x2 0 0))
        (local.set $c5 (v128.const i64x2 0 0))
        (local.set $c6 (v128.const i64x2 0 0))
        (local.set $c7 (v128.const i64x2 0 0))
        (local.set $ap (local.get $a))
        ;; Panel j / 4 starts at j·k·4 bytes.
        (local.set $bp
          (i32.add (local.get $b) (i32.mul (local.get $j) (i32.shl (local.get $k) (i32.const 2)))))
        (block $stepsDone
          (loop $steps
            (br_if $stepsDone (i32.ge_u (local.get $ap) (local.get $aEnd)))
            (local.set $x (f64x2.splat (f64.load (local.get $ap))))
            (local.set $c0 (f64x2.add (local.get $c0) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $bp))))))
            (local.set $c1 (f64x2.add (local.get $c1) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $bp))))))
            (local.set $o (i32.add (local.get $bp) (local.get $panel)))
            (local.set $c2 (f64x2.add (local.get $c2) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $o))))))
            (local.set $c3 (f64x2.add (local.get $c3) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $o))))))
            (local.set $o (i32.add (local.get $o) (local.get $panel)))
            (local.set $c4 (f64x2.add (local.get $c4) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $o))))))
            (local.set $c5 (f64x2.add (local.get $c5) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $o))))))
            (local.set $o (i32.add (local.get $o) (local.get $panel)))
            (local.set $c6 (f64x2.add (local.get $c6) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $o))))))
            (local.set $c7 (f64x2.add (local.get $c7) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $o))))))
            (local.set $ap (i32.add (local.get $ap) (i32.const 8)))
            (local.set $bp (i32.add (local.get $bp) (i32.const 16)))
            (br $steps)))
        (local.set $o (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 3))))
        (v128.store (local.get $o) (local.get $c0))
        (v128.store offset=16 (local.get $o) (local.get $c1))
        (v128.store offset=32 (local.get $o) (local.get $c2))
        (v128.store offset=48 (local.get $o) (local.get $c3))
        (v128.store offset=64 (local.get $o) (local.get $c4))
        (v128.store offset=80 (local.get $o) (local.get $c5))
        (v128.store offset=96 (local.get $o) (local.get $c6))
        (v128.store offset=112 (local.get $o) (local.get $c7))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $four)))
    (block $oneDone
      (loop $one
        (br_if $oneDone (i32.ge_u (local.get $j) (local.get $n)))
        (local.set $c0 (v128.const i64x2 0 0))
        (local.set $c1 (v128.const i64x2 0 0))
        (local.set $ap (local.get $a))
        (local.set $bp
          (i32.add (local.get $b) (i32.mul (local.get $j) (i32.shl (local.get $k) (i32.const 2)))))
        (block $stepsDone
          (loop $steps
            (br_if $stepsDone (i32.ge_u (local.get $ap) (local.get $aEnd)))
            (local.set $x (f64x2.splat (f64.load (local.get $ap))))
            (local.set $c0 (f64x2.add (local.get $c0) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero (local.get $bp))))))
            (local.set $c1 (f64x2.add (local.get $c1) (f64x2.mul (local.get $x)
              (f64x2.promote_low_f32x4 (v128.load64_zero offset=8 (local.get $bp))))))
            (local.set $ap (i32.add (local.get $ap) (i32.const 8)))
            (local.set $bp (i32.add (local.get $bp) (i32.const 16)))
            (br $steps)))
        (local.set $o (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 3))))
        (v128.store (local.get $o) (local.get $c0))
        (v128.store offset=16 (local.get $o) (local.get $c1))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $one)))))
