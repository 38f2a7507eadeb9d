/**
 * Loads the CPU backend and registers every CPU kernel.
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
