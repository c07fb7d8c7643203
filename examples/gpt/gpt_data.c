/* Training text of the GPT example (see gpt_data.h). */
#include "gpt_data.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static loom_status append(gpt_tokens *t, size_t *capacity, const char *bytes, size_t n) {
  if (t->count + n > *capacity) {
    size_t want = (*capacity ? *capacity * 2 : 1 << 20) + n;
    uint16_t *grown = realloc(t->tokens, want * sizeof *grown);
    if (!grown) return loom_error_set(LOOM_ERR_NOMEM, "fortunes text (%zu bytes)", want);
    t->tokens = grown, *capacity = want;
  }
  for (size_t i = 0; i < n; i++) t->tokens[t->count++] = (unsigned char)bytes[i];
  return LOOM_OK;
}

/* The names of the regular files of `dir` that are not .dat indexes, sorted. */
static loom_status list_texts(const char *dir, char ***names, int *count) {
  DIR *d = opendir(dir);
  if (!d)
    return loom_error_set(LOOM_ERR_IO, "fortunes directory %s: %s (Debian: apt-get install "
                          "fortunes fortunes-min)", dir, strerror(errno));
  int n = 0, cap = 0;
  char **list = NULL;
  loom_status status = LOOM_OK;
  for (struct dirent *e; status == LOOM_OK && (e = readdir(d));) {
    size_t len = strlen(e->d_name);
    if (e->d_name[0] == '.' || (len > 4 && strcmp(e->d_name + len - 4, ".dat") == 0)) continue;
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue; /* links, directories */
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      char **grown = realloc(list, sizeof *list * (size_t)cap);
      if (!grown) {
        status = loom_error_set(LOOM_ERR_NOMEM, "listing %s", dir);
        break;
      }
      list = grown;
    }
    if (!(list[n] = strdup(path))) status = loom_error_set(LOOM_ERR_NOMEM, "listing %s", dir);
    else n++;
  }
  closedir(d);
  if (status == LOOM_OK && n == 0)
    status = loom_error_set(LOOM_ERR_IO, "fortunes directory %s holds no text file", dir);
  if (status < 0) {
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
    return status;
  }
  qsort(list, (size_t)n, sizeof *list, by_name);
  *names = list, *count = n;
  return LOOM_OK;
}

loom_status gpt_data_fortunes(const char *dir, gpt_tokens *train, gpt_tokens *validation) {
  *train = (gpt_tokens){0}, *validation = (gpt_tokens){0};
  char **names = NULL;
  int files = 0;
  LOOM_CHECK(list_texts(dir, &names, &files));
  size_t cap_train = 0, cap_val = 0, fortune = 0;
  loom_status status = LOOM_OK;
  for (int f = 0; f < files && status == LOOM_OK; f++) {
    FILE *in = fopen(names[f], "rb");
    if (!in) {
      status = loom_error_set(LOOM_ERR_IO, "fortunes file %s: %s", names[f], strerror(errno));
      break;
    }
    /* a fortune runs up to and including its "%" line; a file's last one may lack it */
    char line[8192];
    char *text = NULL;
    size_t len = 0, cap = 0;
    int more = 1;
    while (status == LOOM_OK && more) {
      more = fgets(line, sizeof line, in) != NULL;
      size_t n = more ? strlen(line) : 0;
      if (n) {
        if (len + n + 1 > cap) {
          cap = 2 * (len + n + 1);
          char *grown = realloc(text, cap);
          if (!grown) {
            status = loom_error_set(LOOM_ERR_NOMEM, "reading %s", names[f]);
            break;
          }
          text = grown;
        }
        memcpy(text + len, line, n), len += n;
      }
      int ends = more && strcmp(line, "%\n") == 0;
      if ((ends || !more) && len > 0) {
        gpt_tokens *to = fortune % 10 == 9 ? validation : train;
        status = append(to, to == validation ? &cap_val : &cap_train, text, len);
        fortune++, len = 0;
      }
    }
    if (ferror(in) && status == LOOM_OK)
      status = loom_error_set(LOOM_ERR_IO, "reading fortunes file %s failed", names[f]);
    fclose(in);
    free(text);
  }
  for (int f = 0; f < files; f++) free(names[f]);
  free(names);
  if (status < 0) {
    gpt_tokens_free(train), gpt_tokens_free(validation);
    return status;
  }
  return LOOM_OK;
}

loom_status gpt_data_shard(const char *path, int vocab, gpt_tokens *out) {
  *out = (gpt_tokens){0};
  FILE *in = fopen(path, "rb");
  if (!in) return loom_error_set(LOOM_ERR_IO, "token shard %s: %s", path, strerror(errno));
  int32_t header[GPT_SHARD_HEADER_INTS];
  loom_status status = LOOM_OK;
  struct stat st;
  if (fstat(fileno(in), &st) != 0 || fread(header, sizeof header, 1, in) != 1)
    status = loom_error_set(LOOM_ERR_IO, "token shard %s: shorter than its %zu-byte header", path,
                            sizeof header);
  else if (header[0] != GPT_SHARD_MAGIC)
    status = loom_error_set(LOOM_ERR_IO, "token shard %s: magic %d at offset 0, expected %d "
                            "(llm.c's format)", path, header[0], GPT_SHARD_MAGIC);
  else if (header[1] != GPT_SHARD_VERSION)
    status = loom_error_set(LOOM_ERR_IO, "token shard %s: version %d at offset 4, expected %d",
                            path, header[1], GPT_SHARD_VERSION);
  else if (header[2] < 0 || (uint64_t)st.st_size < sizeof header + 2 * (uint64_t)header[2])
    status = loom_error_set(LOOM_ERR_IO, "token shard %s: truncated: the header (offset 8) says "
                            "%d tokens, the file holds %lld after the header", path, header[2],
                            (long long)(st.st_size - (off_t)sizeof header) / 2);
  if (status == LOOM_OK) {
    out->count = (size_t)header[2];
    out->tokens = malloc(out->count * sizeof(uint16_t) + 1);
    if (!out->tokens) status = loom_error_set(LOOM_ERR_NOMEM, "token shard %s (%zu tokens)", path, out->count);
    else if (fread(out->tokens, sizeof(uint16_t), out->count, in) != out->count)
      status = loom_error_set(LOOM_ERR_IO, "token shard %s: read failed", path);
  }
  for (size_t i = 0; status == LOOM_OK && i < out->count; i++)
    if (out->tokens[i] >= vocab)
      status = loom_error_set(LOOM_ERR_IO, "token shard %s: token %u at byte offset %zu is not "
                              "below the vocabulary %d", path, out->tokens[i],
                              sizeof header + 2 * i, vocab);
  fclose(in);
  if (status < 0) gpt_tokens_free(out);
  return status;
}

loom_status gpt_data_shard_write(const char *path, const uint16_t *tokens, size_t count) {
  if (count > INT32_MAX)
    return loom_error_set(LOOM_ERR_ARG, "token shard %s: %zu tokens, at most %d", path, count, INT32_MAX);
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) return loom_error_set(LOOM_ERR_IO, "token shard %s: %s", tmp, strerror(errno));
  int32_t header[GPT_SHARD_HEADER_INTS] = {GPT_SHARD_MAGIC, GPT_SHARD_VERSION, (int32_t)count};
  int ok = fwrite(header, sizeof header, 1, f) == 1 &&
           fwrite(tokens, sizeof(uint16_t), count, f) == count;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    remove(tmp);
    return loom_error_set(LOOM_ERR_IO, "writing token shard %s failed", path);
  }
  return LOOM_OK;
}

void gpt_tokens_free(gpt_tokens *t) {
  free(t->tokens);
  *t = (gpt_tokens){0};
}

/* Copies the window of T + 1 tokens at `start` into row s of tokens and targets. */
static void take_window(const gpt_tokens *data, uint64_t start, int s, int T, int *tokens,
                        int *targets) {
  const uint16_t *w = data->tokens + start;
  for (int t = 0; t < T; t++) tokens[(size_t)s * T + t] = w[t], targets[(size_t)s * T + t] = w[t + 1];
}

static loom_status check_length(const gpt_tokens *data, int T) {
  if (data->count < (size_t)T + 1)
    return loom_error_set(LOOM_ERR_ARG, "the data holds %zu tokens, fewer than context + 1 = %d",
                          data->count, T + 1);
  return LOOM_OK;
}

loom_status gpt_data_batch(const gpt_tokens *data, uint64_t seed, int64_t step, int first,
                           int count, int T, int *tokens, int *targets) {
  LOOM_CHECK(check_length(data, T));
  uint64_t windows = data->count - (uint64_t)T; /* starts 0 .. count - T - 1 */
  for (int s = 0; s < count; s++) {
    uint64_t index = 2 * (uint64_t)(first + s);
    uint64_t r = (uint64_t)loom_rng_word_at(seed, LOOM_RNG_DATA, (uint32_t)step, index) << 32 |
                 loom_rng_word_at(seed, LOOM_RNG_DATA, (uint32_t)step, index + 1);
    take_window(data, r % windows, s, T, tokens, targets);
  }
  return LOOM_OK;
}

loom_status gpt_data_tiles(const gpt_tokens *data, int64_t first, int count, int T, int *tokens,
                           int *targets) {
  LOOM_CHECK(check_length(data, T));
  uint64_t windows = data->count - (uint64_t)T;
  for (int s = 0; s < count; s++)
    take_window(data, ((uint64_t)(first + s) * (uint64_t)T) % windows, s, T, tokens, targets);
  return LOOM_OK;
}
