/* loom-ckpt export: whole tensors of a verified checkpoint into a safetensors file, either as
 * they are (every tensor under its own name) or as a Hugging Face GPT-2 directory. Messages
 * go to stderr prefixed "loom-ckpt export: "; files appear complete or not at all (written to
 * <path>.tmp, flushed, renamed, directory synced). */
#ifndef LOOM_CHECKPOINT_TOOL_EXPORT_H
#define LOOM_CHECKPOINT_TOOL_EXPORT_H

#include "checkpoint/inspect.h"

/* One tensor of an export: its name in the file, the checkpoint tensor it comes from, and
 * whether a (rows, cols) matrix is written transposed as (cols, rows). */
typedef struct {
  char name[128];
  const loom_ckpt_tensor_info *tensor;
  int transpose;
} export_entry;

/* Writes `entries` (count, in order, packed) to `file` with info's step, version and mesh
 * as metadata. 0 on success, -1 with a message. */
int export_safetensors(const loom_ckpt_info *info, const export_entry *entries, int count,
                       const char *file);

/* Writes `length` bytes of `text` to `path` (tmp, fsync, rename); 0 or -1 with a message. */
int export_text_file(const char *path, const char *text, size_t length);

/* The checkpoint of a GPT-2 model (loom's example names: wte, wpe, h.<l>.*, ln_f.*, and the
 * int32 tensor gpt.shape = {layers, width, heads, vocab, context}) as a directory that
 * transformers.GPT2LMHeadModel.from_pretrained loads: model.safetensors with GPT-2's names
 * ("transformer." prefix, Conv1D weights (in, out)) and config.json. Optimizer state and
 * other tensors are left out. 0 on success, -1 with a message naming what is missing. */
int export_gpt2(const loom_ckpt_info *info, const char *dir);

#endif
