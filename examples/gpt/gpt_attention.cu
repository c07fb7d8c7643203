// Flash-style causal attention of the CUDA GPT (see gpt_attention.cuh).
//
// A block of 4 warps owns a tile of 64 rows (queries, or keys for dK/dV); each warp owns 16
// of them and computes its 16 x 64 slice of the scores with WMMA 16 x 16 x 16 products from
// tiles in shared memory. WMMA accumulators are opaque about which element is which row, so
// the row-wise softmax steps go through a per-warp float32 tile in shared memory, two lanes
// per row (32 columns each). Rows and keys past T are zero-filled and masked.
#include "gpt_attention.cuh"

#include <mma.h>

#include <math.h>

using namespace nvcuda;

namespace {

constexpr int kTile = 64;          // queries per block, keys per tile
constexpr int kWarps = 4;          // 16 rows each
constexpr int kThreads = 32 * kWarps;
// Leading dimensions of the shared tiles, padded so that the 16 rows a warp works on fall on
// different banks (unpadded, every row starts on bank 0 and row-wise steps serialise 16-fold).
constexpr int kLdS = kTile + 4;    // float32 score tiles (16, 64)
constexpr int kLdP = kTile + 8;    // bfloat16 probability tiles (16, 64)
__host__ __device__ constexpr int ld_tile(int hd) { return hd + 8; }  // bfloat16 (64, hd) tiles
__host__ __device__ constexpr int ld_out(int hd) { return hd + 4; }   // float32 (16, hd) tiles

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_bt; // B^T of row-major B
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

loom_status launched(const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return LOOM_OK;
  return loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: kernel %s: %s", what, cudaGetErrorString(e));
}

// Rows [row0, row0 + 64) of one head (columns col .. col + HD of rows `stride` apart) into
// sm (64, HD; ld ld_tile), 16 bytes at a time; rows past T are zeros.
template <int HD>
__device__ void load_tile(const bf16 *base, int stride, int col, int row0, int T, bf16 *sm) {
  constexpr int pieces = HD / 8;
  for (int i = threadIdx.x; i < kTile * pieces; i += blockDim.x) {
    int r = i / pieces, v = i % pieces, t = row0 + r;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (t < T) value = *reinterpret_cast<const uint4 *>(base + (size_t)t * stride + col + v * 8);
    *reinterpret_cast<uint4 *>(sm + r * ld_tile(HD) + v * 8) = value;
  }
}

// out (16, 64; ld kLdS) = a (16, HD) b^T, b (64, HD), both ld ld_tile: one warp
template <int HD>
__device__ void product_abt(const bf16 *a, const bf16 *b, float *out) {
#pragma unroll
  for (int n = 0; n < kTile / 16; n++) {
    frag_c acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int k = 0; k < HD / 16; k++) {
      frag_a fa;
      frag_bt fb;
      wmma::load_matrix_sync(fa, a + k * 16, ld_tile(HD));
      wmma::load_matrix_sync(fb, b + n * 16 * ld_tile(HD) + k * 16, ld_tile(HD));
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + n * 16, acc, kLdS, wmma::mem_row_major);
  }
}

// acc (16, HD) += a (16, 64; ld kLdP) b (64, HD; ld ld_tile): one warp
template <int HD>
__device__ void product_ab(const bf16 *a, const bf16 *b, frag_c (&acc)[HD / 16]) {
#pragma unroll
  for (int n = 0; n < HD / 16; n++)
#pragma unroll
    for (int k = 0; k < kTile / 16; k++) {
      frag_a fa;
      frag_b fb;
      wmma::load_matrix_sync(fa, a + k * 16, kLdP);
      wmma::load_matrix_sync(fb, b + k * 16 * ld_tile(HD) + n * 16, ld_tile(HD));
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
}

// Writes a warp's 16 x HD accumulators as bfloat16 rows row0 .. row0 + 15 (those < T) of
// dst (rows `stride` apart, columns col ..), through the warp's float32 staging tile.
template <int HD>
__device__ void store_rows(frag_c (&acc)[HD / 16], float *stage, int row0, int T, bf16 *dst,
                           int stride, int col) {
  int lane = threadIdx.x % 32;
  __syncwarp();
#pragma unroll
  for (int n = 0; n < HD / 16; n++) wmma::store_matrix_sync(stage + n * 16, acc[n], ld_out(HD), wmma::mem_row_major);
  __syncwarp();
  for (int i = lane; i < 16 * HD; i += 32) {
    int r = i / HD, c = i % HD;
    if (row0 + r < T) dst[(size_t)(row0 + r) * stride + col + c] = __float2bfloat16(stage[r * ld_out(HD) + c]);
  }
  __syncwarp();
}

// a warp's float32 tile: scores (16, kLdS) or an output (16, ld_out)
__host__ __device__ constexpr int stage_floats(int hd) { return 16 * (ld_out(hd) > kLdS ? ld_out(hd) : kLdS); }

template <int HD> constexpr size_t forward_smem() {
  return 3 * kTile * ld_tile(HD) * 2 + kWarps * 16 * kLdS * 4 + kWarps * 16 * ld_out(HD) * 4 +
         kWarps * 16 * kLdP * 2;
}
template <int HD> constexpr size_t backward_smem() {
  return 4 * kTile * ld_tile(HD) * 2 + 2 * kWarps * stage_floats(HD) * 4 + 2 * kWarps * 16 * kLdP * 2 +
         2 * kTile * 4;
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
    flash_forward(const bf16 *qkv, int T, int H, float scale, bf16 *out, float *lse) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LT = ld_tile(HD), LO = ld_out(HD);
  bf16 *Qs = (bf16 *)smem, *Ks = Qs + kTile * LT, *Vs = Ks + kTile * LT;
  float *Ss = (float *)(Vs + kTile * LT), *Os = Ss + kWarps * 16 * kLdS;
  bf16 *Ps = (bf16 *)(Os + kWarps * 16 * LO);
  int qt = gridDim.x - 1 - blockIdx.x; // the longest rows first
  int bh = blockIdx.y, b = bh / H, h = bh % H, d = H * HD;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  const bf16 *seq = qkv + (size_t)b * T * 3 * d;
  int q0 = qt * kTile, q = q0 + warp * 16 + r;
  float *S = Ss + warp * 16 * kLdS, *O = Os + warp * 16 * LO;
  bf16 *P = Ps + warp * 16 * kLdP;
  load_tile<HD>(seq, 3 * d, h * HD, q0, T, Qs);
  for (int i = lane; i < 16 * LO; i += 32) O[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int kt = 0; kt <= qt; kt++) {
    int k0 = kt * kTile;
    __syncthreads(); // the previous K and V tiles are consumed
    load_tile<HD>(seq, 3 * d, d + h * HD, k0, T, Ks);
    load_tile<HD>(seq, 3 * d, 2 * d + h * HD, k0, T, Vs);
    __syncthreads();
    product_abt<HD>(Qs + warp * 16 * LT, Ks, S);
    __syncwarp();
    // online softmax of row r, columns 2 j + half: rescale what O holds, P = exp(s - m)
    float s[32], tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < 32; j++) {
      int key = k0 + 2 * j + half;
      s[j] = key <= q && key < T ? S[r * kLdS + 2 * j + half] * scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    float m_new = fmaxf(m, tile_max), sum = 0.0f;
    float alpha = m_new == -INFINITY ? 1.0f : __expf(m - m_new);
#pragma unroll
    for (int j = 0; j < 32; j++) {
      float p = m_new == -INFINITY ? 0.0f : __expf(s[j] - m_new);
      sum += p;
      P[r * kLdP + 2 * j + half] = __float2bfloat16(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum, m = m_new;
    for (int c = half; c < HD; c += 2) O[r * LO + c] *= alpha;
    __syncwarp();
    frag_c acc[HD / 16];
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::load_matrix_sync(acc[n], O + n * 16, LO, wmma::mem_row_major);
    product_ab<HD>(P, Vs, acc);
#pragma unroll
    for (int n = 0; n < HD / 16; n++) wmma::store_matrix_sync(O + n * 16, acc[n], LO, wmma::mem_row_major);
    __syncwarp();
  }
  if (q < T) {
    float inv = 1.0f / l;
    bf16 *o = out + ((size_t)b * T + q) * d + h * HD;
    for (int c = half; c < HD; c += 2) o[c] = __float2bfloat16(O[r * LO + c] * inv);
    if (half == 0) lse[(size_t)bh * T + q] = m + logf(l);
  }
}

// delta (B H T) = rowsum(dout o out) per head: one warp per row
__global__ void attention_delta(const bf16 *out, const bf16 *dout, int B, int T, int H, int hd,
                                float *delta) {
  int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (i >= B * H * T) return;
  int t = i % T, bh = i / T, b = bh / H, h = bh % H;
  size_t o = ((size_t)b * T + t) * (size_t)(H * hd) + (size_t)h * hd;
  float s = 0.0f;
  for (int c = lane; c < hd; c += 32) s += __bfloat162float(out[o + c]) * __bfloat162float(dout[o + c]);
  for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
  if (lane == 0) delta[i] = s;
}

// p and dS = scale p (dp - delta) of a warp's 16 x 64 tile (two lanes per row, columns
// 2 j + half), masked
// causally; `transposed`: rows are keys and columns queries (the dK/dV kernel).
__device__ void softmax_gradient_tile(const float *S, const float *dP, const float *L,
                                      const float *D, int row0, int col0, int transposed, int T,
                                      float scale, bf16 *P, bf16 *dS) {
  int lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
#pragma unroll 8
  for (int j = 0; j < 32; j++) {
    int c = 2 * j + half, row = row0 + r, col = col0 + c;
    int query = transposed ? col : row, key = transposed ? row : col;
    int stat = transposed ? c : r; // index into L and D
    float p = key <= query && query < T ? __expf(S[r * kLdS + c] * scale - L[stat]) : 0.0f;
    if (P) P[r * kLdP + c] = __float2bfloat16(p);
    dS[r * kLdP + c] = __float2bfloat16(scale * p * (dP[r * kLdS + c] - D[stat]));
  }
}

// dK, dV of the key tile blockIdx.x: warp w owns keys k0 + 16 w ..; loops over the query
// tiles at or after it.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    flash_backward_kv(const bf16 *qkv, const bf16 *dout, const float *lse, const float *delta,
                      int T, int H, float scale, bf16 *dqkv) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LT = ld_tile(HD);
  bf16 *Ks = (bf16 *)smem, *Vs = Ks + kTile * LT, *Qs = Vs + kTile * LT, *dOs = Qs + kTile * LT;
  float *Sts = (float *)(dOs + kTile * LT), *dPts = Sts + kWarps * stage_floats(HD);
  bf16 *Pts = (bf16 *)(dPts + kWarps * stage_floats(HD)), *dSts = Pts + kWarps * 16 * kLdP;
  float *Ls = (float *)(dSts + kWarps * 16 * kLdP), *Ds = Ls + kTile;
  int kt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, d = H * HD;
  int warp = threadIdx.x / 32;
  const bf16 *seq = qkv + (size_t)b * T * 3 * d, *dseq = dout + (size_t)b * T * d;
  int k0 = kt * kTile, tiles = (T + kTile - 1) / kTile;
  float *St = Sts + warp * stage_floats(HD), *dPt = dPts + warp * stage_floats(HD);
  bf16 *Pt = Pts + warp * 16 * kLdP, *dSt = dSts + warp * 16 * kLdP;
  load_tile<HD>(seq, 3 * d, d + h * HD, k0, T, Ks);
  load_tile<HD>(seq, 3 * d, 2 * d + h * HD, k0, T, Vs);
  frag_c dk[HD / 16], dv[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; n++) wmma::fill_fragment(dk[n], 0.0f), wmma::fill_fragment(dv[n], 0.0f);
  for (int qt = kt; qt < tiles; qt++) {
    int q0 = qt * kTile;
    __syncthreads();
    load_tile<HD>(seq, 3 * d, h * HD, q0, T, Qs);
    load_tile<HD>(dseq, d, h * HD, q0, T, dOs);
    for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
      int t = q0 + i;
      Ls[i] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
      Ds[i] = t < T ? delta[(size_t)bh * T + t] : 0.0f;
    }
    __syncthreads();
    product_abt<HD>(Ks + warp * 16 * LT, Qs, St);   // S^T (16 keys, 64 queries)
    product_abt<HD>(Vs + warp * 16 * LT, dOs, dPt); // dP^T = V dO^T
    __syncwarp();
    softmax_gradient_tile(St, dPt, Ls, Ds, k0 + warp * 16, q0, 1, T, scale, Pt, dSt);
    __syncwarp();
    product_ab<HD>(Pt, dOs, dv);  // dV += P^T dO
    product_ab<HD>(dSt, Qs, dk);  // dK += dS^T Q
  }
  store_rows<HD>(dk, St, k0 + warp * 16, T, dqkv + (size_t)b * T * 3 * d, 3 * d, d + h * HD);
  store_rows<HD>(dv, St, k0 + warp * 16, T, dqkv + (size_t)b * T * 3 * d, 3 * d, 2 * d + h * HD);
}

// dQ of the query tile: warp w owns queries q0 + 16 w ..; loops over the key tiles up to it.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    flash_backward_q(const bf16 *qkv, const bf16 *dout, const float *lse, const float *delta,
                     int T, int H, float scale, bf16 *dqkv) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int LT = ld_tile(HD);
  bf16 *Qs = (bf16 *)smem, *dOs = Qs + kTile * LT, *Ks = dOs + kTile * LT, *Vs = Ks + kTile * LT;
  float *Ss = (float *)(Vs + kTile * LT), *dPs = Ss + kWarps * stage_floats(HD);
  bf16 *dSs = (bf16 *)(dPs + kWarps * stage_floats(HD)) + kWarps * 16 * kLdP; // after an unused P area
  float *Ls = (float *)(dSs + kWarps * 16 * kLdP), *Ds = Ls + kTile;
  int qt = gridDim.x - 1 - blockIdx.x;
  int bh = blockIdx.y, b = bh / H, h = bh % H, d = H * HD;
  int warp = threadIdx.x / 32;
  const bf16 *seq = qkv + (size_t)b * T * 3 * d, *dseq = dout + (size_t)b * T * d;
  int q0 = qt * kTile;
  float *S = Ss + warp * stage_floats(HD), *dP = dPs + warp * stage_floats(HD);
  bf16 *dS = dSs + warp * 16 * kLdP;
  load_tile<HD>(seq, 3 * d, h * HD, q0, T, Qs);
  load_tile<HD>(dseq, d, h * HD, q0, T, dOs);
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    int t = q0 + i;
    Ls[i] = t < T ? lse[(size_t)bh * T + t] : 0.0f;
    Ds[i] = t < T ? delta[(size_t)bh * T + t] : 0.0f;
  }
  frag_c dq[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; n++) wmma::fill_fragment(dq[n], 0.0f);
  for (int kt = 0; kt <= qt; kt++) {
    int k0 = kt * kTile;
    __syncthreads();
    load_tile<HD>(seq, 3 * d, d + h * HD, k0, T, Ks);
    load_tile<HD>(seq, 3 * d, 2 * d + h * HD, k0, T, Vs);
    __syncthreads();
    product_abt<HD>(Qs + warp * 16 * LT, Ks, S);
    product_abt<HD>(dOs + warp * 16 * LT, Vs, dP);
    __syncwarp();
    softmax_gradient_tile(S, dP, Ls + warp * 16, Ds + warp * 16, q0 + warp * 16, k0, 0, T, scale,
                          NULL, dS);
    __syncwarp();
    product_ab<HD>(dS, Ks, dq); // dQ += dS K
  }
  store_rows<HD>(dq, S, q0 + warp * 16, T, dqkv + (size_t)b * T * 3 * d, 3 * d, h * HD);
}

// Allows `kernel` its dynamic shared memory (above the 48 KiB default); asked before every
// launch (a cheap attribute set) so that each device of the process gets it.
static loom_status allow_shared(const void *kernel, size_t bytes, const char *name) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (e == cudaSuccess) return LOOM_OK;
  cudaGetLastError();
  return loom_error_set(LOOM_ERR_CUDA, "GPT on the GPU: %s needs %zu KiB of shared memory per "
                        "block, which this GPU does not give (%s); use --attention batched",
                        name, bytes >> 10, cudaGetErrorString(e));
}

template <int HD>
loom_status forward_hd(const bf16 *qkv, int B, int T, int H, float scale, bf16 *out, float *lse,
                       cudaStream_t stream) {
  size_t bytes = forward_smem<HD>();
  LOOM_CHECK(allow_shared((const void *)flash_forward<HD>, bytes, "flash_forward"));
  dim3 grid((T + kTile - 1) / kTile, B * H);
  flash_forward<HD><<<grid, kThreads, bytes, stream>>>(qkv, T, H, scale, out, lse);
  return launched("flash_forward");
}

template <int HD>
loom_status backward_hd(const bf16 *qkv, const bf16 *dout, const float *lse, const float *delta,
                        int B, int T, int H, float scale, bf16 *dqkv, cudaStream_t stream) {
  size_t bytes = backward_smem<HD>();
  LOOM_CHECK(allow_shared((const void *)flash_backward_kv<HD>, bytes, "flash_backward_kv"));
  LOOM_CHECK(allow_shared((const void *)flash_backward_q<HD>, bytes, "flash_backward_q"));
  dim3 grid((T + kTile - 1) / kTile, B * H);
  flash_backward_kv<HD><<<grid, kThreads, bytes, stream>>>(qkv, dout, lse, delta, T, H, scale, dqkv);
  LOOM_CHECK(launched("flash_backward_kv"));
  flash_backward_q<HD><<<grid, kThreads, bytes, stream>>>(qkv, dout, lse, delta, T, H, scale, dqkv);
  return launched("flash_backward_q");
}

}  // namespace

int gpt_flash_supported(int hd) { return hd == 32 || hd == 64 || hd == 128; }

loom_status gpt_flash_forward(const bf16 *qkv, int B, int T, int H, int hd, float scale,
                              bf16 *out, float *lse, cudaStream_t stream) {
  switch (hd) {
    case 32: return forward_hd<32>(qkv, B, T, H, scale, out, lse, stream);
    case 64: return forward_hd<64>(qkv, B, T, H, scale, out, lse, stream);
    case 128: return forward_hd<128>(qkv, B, T, H, scale, out, lse, stream);
    default:
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "flash attention: head size %d (built for 32, "
                            "64, 128)", hd);
  }
}

loom_status gpt_flash_backward(const bf16 *qkv, const bf16 *out, const bf16 *dout,
                               const float *lse, int B, int T, int H, int hd, float scale,
                               float *delta, bf16 *dqkv, cudaStream_t stream) {
  int rows = B * H * T;
  attention_delta<<<(rows + 7) / 8, 256, 0, stream>>>(out, dout, B, T, H, hd, delta);
  LOOM_CHECK(launched("attention_delta"));
  switch (hd) {
    case 32: return backward_hd<32>(qkv, dout, lse, delta, B, T, H, scale, dqkv, stream);
    case 64: return backward_hd<64>(qkv, dout, lse, delta, B, T, H, scale, dqkv, stream);
    case 128: return backward_hd<128>(qkv, dout, lse, delta, B, T, H, scale, dqkv, stream);
    default:
      return loom_error_set(LOOM_ERR_UNSUPPORTED, "flash attention: head size %d (built for 32, "
                            "64, 128)", hd);
  }
}
