/**
 * Loads the CUDA backend and registers every CUDA kernel. Importing opens no library: CUDA
 * is probed on first use.
 * @module
 */
import "./backend.ts";
import "./elementwise.ts";
import "./shape.ts";
import "./reduce.ts";
import "./nn.ts";
import "./attention.ts";
import "./matmul.ts";
import "./quantize.ts";
import "./linear.ts";
import "./flinear.ts";
