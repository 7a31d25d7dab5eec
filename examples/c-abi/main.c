/* A complete C program against a model compiled by reformc (`--emit lib`).
 *
 * It loads the weights, runs the model on a batch of token ids with the
 * seeded LSH variant (inputs: input_ids, attention_mask, seed), prints the
 * output's shape and, for the last position, the most likely next token, and
 * optionally writes the logits as raw little-endian float32.
 *
 *   reformc compile examples/tiny-reformer --emit lib -o build/libtiny.so
 *   cc -std=c99 -O2 -o build/tiny examples/c-abi/main.c -Ibuild build/libtiny.so \
 *      -Wl,-rpath,"$PWD/build"
 *   ./build/tiny examples/tiny-reformer/model.safetensors [logits.bin]
 *
 * tests/c_abi_example.rs builds and runs it in CI and checks its logits
 * against `reformc run`.
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>

#define BATCH 1
#define LENGTH 32
#define VOCAB_FOR_IDS 64 /* token ids 0..63: the tiny model's vocabulary */

/* Prints the model's last error and returns the status code. */
static int fail(const char* what, int32_t rc) {
  fprintf(stderr, "%s failed (code %d): %s\n", what, (int)rc, reformc_model_last_error());
  return rc;
}

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s WEIGHTS.safetensors [LOGITS.bin]\n", argv[0]);
    return 2;
  }
  int32_t rc = reformc_model_load_weights(argv[1]);
  if (rc != REFORMC_OK) return fail("loading the weights", rc);

  /* Inputs are borrowed: the caller owns ids, mask and seed. */
  int64_t ids[BATCH * LENGTH];
  for (int i = 0; i < BATCH * LENGTH; i++) ids[i] = (7 * i + 3) % VOCAB_FOR_IDS;
  int64_t seed = 0;
  int64_t shape[2] = {BATCH, LENGTH};
  reformc_tensor inputs[3];
  if ((rc = reformc_tensor_init(&inputs[0], REFORMC_I64, 2, shape, ids)) != REFORMC_OK ||
      /* NULL mask data means all ones: no padding. */
      (rc = reformc_tensor_init(&inputs[1], REFORMC_I64, 2, shape, NULL)) != REFORMC_OK ||
      (rc = reformc_tensor_init(&inputs[2], REFORMC_I64, 0, NULL, &seed)) != REFORMC_OK)
    return fail("describing the inputs", rc);

  /* The output is the caller's after a successful run: release it. */
  reformc_tensor logits;
  rc = reformc_model_run(inputs, 3, &logits, 1);
  if (rc != REFORMC_OK) return fail("running the model", rc);

  int64_t b = logits.shape[0], l = logits.shape[1], v = logits.shape[2];
  const float* x = (const float*)logits.data;
  printf("logits: [%lld, %lld, %lld] f32\n", (long long)b, (long long)l, (long long)v);
  const float* last = x + (l - 1) * v;
  int64_t best = 0;
  for (int64_t k = 1; k < v; k++)
    if (last[k] > last[best]) best = k;
  printf("most likely token after the last position: %lld (logit %.4f)\n", (long long)best,
         last[best]);

  if (argc == 3) {
    FILE* f = fopen(argv[2], "wb");
    size_t n = (size_t)(b * l * v);
    if (!f || fwrite(x, sizeof(float), n, f) != n || fclose(f) != 0) {
      fprintf(stderr, "cannot write %s\n", argv[2]);
      reformc_tensor_release(&logits);
      return 1;
    }
  }
  reformc_tensor_release(&logits);
  reformc_model_unload_weights();
  return 0;
}
