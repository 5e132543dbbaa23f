/* cuBLAS, loaded at run time (blas.cu): the one GEMM entry point linear.cu uses. */
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

/* Whether a cuBLAS library was found (INFERENCE_PIO_CUBLAS names one; "0" turns it off). */
bool toc_blas_available(void);

/* y = x w^T for bf16 x [m, k] (row stride ldx) and w [n, k]: y [m, n] (row stride ldy) in bf16,
 * or in fp32 when y_f32; on stream s. TO_ERR_UNSUPPORTED when no cuBLAS can serve it (the caller
 * has its own GEMM), else TO_OK or the failure's code with the message set. */
int toc_blas_gemm_bf16(cudaStream_t s, const void *w, const void *x, void *y, int64_t m, int64_t n, int64_t k,
                       int64_t ldx, int64_t ldy, bool y_f32);
