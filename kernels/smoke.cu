// A minimal kernel that checks the build, module loading and argument passing end to end.

// y[i] = a * x[i] + y[i] for i < n (one thread per element).
extern "C" __global__ void smoke_axpy_f32(float a, const float* x, float* y, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
