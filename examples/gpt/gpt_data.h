/* Training text for the GPT example, no download:
 *   - byte-level text (vocabulary 256) from the Debian fortunes packages: every regular file
 *     under the directory except the .dat indexes (links skipped), in name order, split into
 *     fortunes at the "%" lines; every tenth fortune (index 9, 19, ...) is validation, the
 *     rest training. Each fortune keeps its text and its closing "%\n".
 *   - llm.c's token shards: a header of 256 int32 (magic 20240520, version 1, token count),
 *     then the tokens as uint16 (GPT-2 BPE, vocabulary 50257, from llm.c's scripts).
 * Batches are windows of T + 1 tokens (inputs, and targets shifted by one) at positions drawn
 * from (seed, step, sequence): a step's batch does not depend on the rank count or on what ran
 * before, so a resumed run (which restores the step) reads exactly the batches it would have. */
#ifndef LOOM_EXAMPLES_GPT_DATA_H
#define LOOM_EXAMPLES_GPT_DATA_H

#include <stddef.h>
#include <stdint.h>

#include <loom.h>

#define GPT_FORTUNES_DIR "/usr/share/games/fortunes"
enum { GPT_SHARD_MAGIC = 20240520, GPT_SHARD_VERSION = 1, GPT_SHARD_HEADER_INTS = 256 };

typedef struct {
  uint16_t *tokens;
  size_t count;
} gpt_tokens;

/* Loads the fortunes under `dir` (one line naming the directory or file on failure). */
loom_status gpt_data_fortunes(const char *dir, gpt_tokens *train, gpt_tokens *validation);
/* Loads one llm.c shard, checking magic, version, length and every token against `vocab`
 * (a bad one is named with its byte offset). */
loom_status gpt_data_shard(const char *path, int vocab, gpt_tokens *out);
/* Writes tokens as an llm.c shard (for tests and tools); the file appears complete or not at
 * all (written to path.tmp, then renamed). */
loom_status gpt_data_shard_write(const char *path, const uint16_t *tokens, size_t count);
void gpt_tokens_free(gpt_tokens *t);

/* Sequences [first, first + count) of the global batch of step `step`: tokens and targets
 * (count, T). LOOM_ERR_ARG when the data holds fewer than T + 1 tokens. */
loom_status gpt_data_batch(const gpt_tokens *data, uint64_t seed, int64_t step, int first,
                           int count, int T, int *tokens, int *targets);

/* Validation sequences [first, first + count): sequence g is the window at g T mod (tokens -
 * T), the data cut into consecutive tiles, so any tool can rebuild the same bytes (the export
 * check in tests/examples/gpt_export.sh does). Same errors as gpt_data_batch. */
loom_status gpt_data_tiles(const gpt_tokens *data, int64_t first, int count, int T, int *tokens,
                           int *targets);

#endif
