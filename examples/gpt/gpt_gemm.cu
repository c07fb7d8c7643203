// cuBLASLt / cuBLAS products of the CUDA GPT (see gpt_gemm.cuh).
#include "gpt_gemm.cuh"

#include <stdlib.h>
#include <string.h>

namespace {

constexpr size_t kWorkspaceBytes = 32u << 20;
constexpr int kPlans = 64; // distinct shapes of one model: about 20 per micro-batch size

// One cached cuBLASLt plan: descriptors and the heuristic's algorithm for a shape.
struct plan {
  int key[11];
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
};

loom_status lt_check(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: cuBLASLt %s: status %d (%s)", what,
                        (int)s, cublasGetStatusString(s));
}

}  // namespace

static void plan_free(plan *p); // destroys a plan's descriptors, leaves it zeroed

struct gpt_blas {
  cudaStream_t stream;
  cublasLtHandle_t lt;
  cublasHandle_t blas;
  void *workspace;
  plan plans[kPlans];
  int plan_count;
};

loom_status gpt_gemm_create(cudaStream_t stream, gpt_blas **out) {
  gpt_blas *g = (gpt_blas *)calloc(1, sizeof *g);
  if (!g) return loom_error_set(LOOM_ERR_NOMEM, "GPT on the GPU: GEMM state");
  g->stream = stream;
  loom_status s = lt_check(cublasLtCreate(&g->lt), "create");
  if (s == LOOM_OK) s = lt_check(cublasCreate(&g->blas), "cublasCreate");
  if (s == LOOM_OK) s = lt_check(cublasSetStream(g->blas, stream), "cublasSetStream");
  if (s == LOOM_OK && cudaMalloc(&g->workspace, kWorkspaceBytes) != cudaSuccess && (cudaGetLastError(), 1))
    s = loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: %zu MiB cuBLASLt workspace",
                       kWorkspaceBytes >> 20);
  if (s != LOOM_OK) {
    gpt_gemm_destroy(g);
    return s;
  }
  *out = g;
  return LOOM_OK;
}

void gpt_gemm_destroy(gpt_blas *g) {
  if (!g) return;
  for (int i = 0; i < g->plan_count; i++) plan_free(&g->plans[i]);
  if (g->workspace) cudaFree(g->workspace);
  if (g->blas) cublasDestroy(g->blas);
  if (g->lt) cublasLtDestroy(g->lt);
  free(g);
}

static void plan_free(plan *p) {
  if (p->op) cublasLtMatmulDescDestroy(p->op);
  if (p->a) cublasLtMatrixLayoutDestroy(p->a);
  if (p->b) cublasLtMatrixLayoutDestroy(p->b);
  if (p->c) cublasLtMatrixLayoutDestroy(p->c);
  memset(p, 0, sizeof *p);
}

// Descriptors and the heuristic's algorithm of the shape in p->key.
static loom_status plan_build(gpt_blas *g, plan *p) {
  const int *key = p->key;
  int ta = key[0], tb = key[1], M = key[2], N = key[3], K = key[4], lda = key[5], ldb = key[6];
  int ldc = key[7], c_fp32 = key[8], has_bias = key[9];
  // column-major: D^T (N, M) = op(B)^T op(A)^T; first operand is B's buffer, second A's
  cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  cudaDataType_t ct = c_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  LOOM_CHECK(lt_check(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc"));
  LOOM_CHECK(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first), "transa"));
  LOOM_CHECK(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second), "transb"));
  cublasLtEpilogue_t epilogue = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  LOOM_CHECK(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue), "epilogue"));
  if (has_bias) {
    cudaDataType_t bt = CUDA_R_16BF;
    LOOM_CHECK(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), "bias type"));
  }
  LOOM_CHECK(lt_check(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb), "layout B"));
  LOOM_CHECK(lt_check(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda), "layout A"));
  LOOM_CHECK(lt_check(cublasLtMatrixLayoutCreate(&p->c, ct, N, M, ldc), "layout C"));
  cublasLtMatmulPreference_t pref;
  LOOM_CHECK(lt_check(cublasLtMatmulPreferenceCreate(&pref), "preference"));
  size_t ws = kWorkspaceBytes;
  cublasStatus_t hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  if (hs == CUBLAS_STATUS_SUCCESS)
    hs = cublasLtMatmulAlgoGetHeuristic(g->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0)
    return loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: cuBLASLt has no algorithm for %s%s "
                          "M=%d N=%d K=%d (lda %d ldb %d ldc %d, %s output%s): status %d",
                          ta ? "T" : "N", tb ? "T" : "N", M, N, K, lda, ldb, ldc,
                          c_fp32 ? "float32" : "bfloat16", has_bias ? ", bias" : "", (int)hs);
  p->algo = result.algo;
  return LOOM_OK;
}

// The plan of a shape, created the first time it is asked for.
static loom_status find_plan(gpt_blas *g, const int key[11], plan **out) {
  for (int i = 0; i < g->plan_count; i++)
    if (memcmp(g->plans[i].key, key, sizeof g->plans[i].key) == 0) {
      *out = &g->plans[i];
      return LOOM_OK;
    }
  if (g->plan_count == kPlans)
    return loom_error_set(LOOM_ERR_INTERNAL, "GPT on the GPU: more than %d GEMM shapes", kPlans);
  plan *p = &g->plans[g->plan_count];
  memset(p, 0, sizeof *p);
  memcpy(p->key, key, sizeof p->key);
  loom_status status = plan_build(g, p);
  if (status != LOOM_OK) {
    plan_free(p); // not counted: nothing of it outlives the failure
    return status;
  }
  g->plan_count++;
  *out = p;
  return LOOM_OK;
}

loom_status gpt_gemm(gpt_blas *g, int trans_a, int trans_b, int M, int N, int K, const void *A,
                     int lda, const void *B, int ldb, float beta, const void *C, void *D, int ldc,
                     int c_fp32, const void *bias) {
  int key[11] = {trans_a, trans_b, M, N, K, lda, ldb, ldc, c_fp32, bias != NULL, 0};
  plan *p = NULL;
  LOOM_CHECK(find_plan(g, key, &p));
  if (bias)
    LOOM_CHECK(lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "bias"));
  float alpha = 1.0f;
  if (!C) C = D, beta = 0.0f;
  return lt_check(cublasLtMatmul(g->lt, p->op, &alpha, B, p->a, A, p->b, &beta, C, p->c, D, p->c,
                                 &p->algo, g->workspace, kWorkspaceBytes, g->stream),
                  "matmul");
}

loom_status gpt_gemm_batched(gpt_blas *g, int trans_a, int trans_b, int M, int N, int K,
                             float alpha, const void *A, int lda, long long stride_a,
                             const void *B, int ldb, long long stride_b, float beta, void *C,
                             int ldc, long long stride_c, int batch, int c_fp32) {
  cublasStatus_t s = cublasGemmStridedBatchedEx(
      g->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
      &alpha, B, CUDA_R_16BF, ldb, stride_b, A, CUDA_R_16BF, lda, stride_a, &beta, C,
      c_fp32 ? CUDA_R_32F : CUDA_R_16BF, ldc, stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return lt_check(s, "strided batched GEMM");
}
