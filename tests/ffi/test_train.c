/* The personalization loop through the C API: train on in-memory examples, evaluate,
 * export, load into an open runtime, cancel from a second thread, survive SIGKILL of a
 * training child and resume, keep versions and roll back. Run by tests/suite/ffi.rs:
 *   test_train MODEL WORK_DIR
 * It writes WORK_DIR/{straight,cancelled,resumed}.gguf; the suite checks that their
 * tensors are bit-identical (the same steps, interrupted or not). Exits non-zero with a
 * message on the first failed check. */
#define _POSIX_C_SOURCE 200809L
#include "edgelora.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define STEPS 6
static const char *INSTRUCTION = "Decide on this loan application. Answer with one word: approve or reject.";
static const char *MODEL;
static char WORK[1024];

static char *path_in(const char *name) {
  static char buf[8][1200];
  static int i = 0;
  i = (i + 1) % 8;
  snprintf(buf[i], sizeof buf[i], "%s/%s", WORK, name);
  return buf[i];
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The same credit-style records as the Rust tests: approve when the score is high and the debt low. */
static void record(int k, char *input, size_t n, const char **answer) {
  int score = 520 + (k * 37) % 300, dti = 10 + (k * 13) % 45;
  snprintf(input, n, "Credit score: %d\nDebt-to-income: %d%%", score, dti);
  *answer = (score >= 650 && dti <= 35) ? "approve" : "reject";
}

static EdgeloraTrainParams params(const char *ckpt) {
  EdgeloraTrainParams p = edgelora_train_params_default();
  p.rank = 4;
  p.alpha = 8;
  p.targets = "q_proj,v_proj";
  p.lr = 1e-2f;
  p.steps = STEPS;
  p.batch = 2;
  p.max_len = 96;
  p.seed = 7;
  p.checkpoint_dir = ckpt;
  p.save_every = 1;
  p.name = "credit";
  return p;
}

static EdgeloraTrainJob *open_job(const char *ckpt, int n_train, int n_eval, unsigned yield_ms) {
  EdgeloraTrainParams p = params(ckpt);
  p.yield_ms = yield_ms;
  EdgeloraTrainJob *job = NULL;
  EdgeloraStatus st = edgelora_train_open(MODEL, &p, &job);
  CHECK(st == EDGELORA_STATUS_OK && job, "train_open: status %d", st);
  char input[128];
  const char *answer;
  for (int i = 0; i < n_train; i++) {
    record(i, input, sizeof input, &answer);
    st = edgelora_train_add_example(job, INSTRUCTION, input, answer);
    CHECK(st == EDGELORA_STATUS_OK, "add_example %d: status %d", i, st);
  }
  for (int i = 0; i < n_eval; i++) {
    record(100 + i, input, sizeof input, &answer);
    st = edgelora_train_add_eval_example(job, INSTRUCTION, input, answer);
    CHECK(st == EDGELORA_STATUS_OK, "add_eval_example %d: status %d", i, st);
  }
  return job;
}

static bool file_exists(const char *p) {
  struct stat s;
  return stat(p, &s) == 0;
}

/* The SIGKILL check runs first, before this process starts any library thread: a child
 * forked from a process whose thread pools are running would inherit pools without
 * their threads. */
static void killed_child_then_resume(void) {
  const char *ckpt = path_in("killed.ckpt");
  char ckfile[1300];
  snprintf(ckfile, sizeof ckfile, "%s/checkpoint.safetensors", ckpt);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    /* The child trains slowly (300 ms between steps) until killed. */
    EdgeloraTrainJob *job = open_job(ckpt, 8, 0, 300);
    edgelora_train_run(job, NULL, NULL);
    _exit(3); /* finishing means the parent never killed it */
  }
  /* Kill it once a checkpoint exists (written after a step, by rename: whole or absent). */
  for (int i = 0; i < 6000 && !file_exists(ckfile); i++) sleep_ms(10);
  CHECK(file_exists(ckfile), "the training child wrote no checkpoint in 60 s");
  sleep_ms(150);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child was not killed mid-run (status %d)", status);

  EdgeloraTrainJob *job = open_job(ckpt, 8, 0, 0);
  uint32_t step = 0, total = 0;
  double mb = 0;
  EdgeloraStatus st = edgelora_train_prepare(job, &step, &total, &mb);
  CHECK(st == EDGELORA_STATUS_OK, "prepare after kill: status %d", st);
  CHECK(step >= 1 && step < total && total == STEPS, "resumed at step %u of %u (expected mid-run)", step, total);
  CHECK(mb > 100, "memory estimate %.0f MiB", mb);
  printf("killed child: resumed at step %u/%u (estimate %.0f MiB)\n", step, total, mb);
  st = edgelora_train_run(job, NULL, NULL);
  CHECK(st == EDGELORA_STATUS_OK, "resumed run: status %d", st);
  st = edgelora_train_export(job, path_in("resumed.gguf"), NULL);
  CHECK(st == EDGELORA_STATUS_OK, "export resumed: status %d", st);
  edgelora_train_close(job);
}

static char *generate(EdgeloraRuntime *rt, const char *adapter, const char *input) {
  char prompt[512];
  snprintf(prompt, sizeof prompt, "%s\n\n%s", INSTRUCTION, input);
  EdgeloraGenerateParams p = edgelora_generate_params_default();
  const char *names[1] = {adapter};
  float scales[1] = {1.0f};
  p.prompt = prompt;
  p.chat = true;
  p.max_tokens = 6;
  p.adapter_names = names;
  p.adapter_scales = scales;
  p.n_adapters = adapter ? 1 : 0;
  EdgeloraGenerateResult r;
  EdgeloraStatus st = edgelora_runtime_generate(rt, &p, NULL, NULL, &r);
  CHECK(st == EDGELORA_STATUS_OK && r.text, "generate: status %d", st);
  return r.text;
}

typedef struct {
  atomic_int last_step;
  int calls;
} Seen;

static bool on_progress(const EdgeloraTrainProgress *p, void *user_data) {
  Seen *s = (Seen *)user_data;
  CHECK(p->total_steps == STEPS && p->step >= 1 && p->step <= STEPS, "progress %u/%u", p->step, p->total_steps);
  CHECK(p->loss > 0 && p->lr >= 0 && p->tokens_per_s > 0 && p->eta_secs >= 0, "progress values");
  atomic_store(&s->last_step, (int)p->step);
  s->calls++;
  /* Any other call on the job from inside its run is refused, not a deadlock. */
  return true;
}

typedef struct {
  EdgeloraTrainJob *job;
  Seen *seen;
} Canceller;

static void *cancel_after_first_step(void *arg) {
  Canceller *c = (Canceller *)arg;
  for (int i = 0; i < 60000 && atomic_load(&c->seen->last_step) < 1; i++) sleep_ms(1);
  edgelora_train_cancel(c->job);
  return NULL;
}

static bool refuse_nested(const EdgeloraTrainProgress *p, void *user_data) {
  (void)p;
  EdgeloraTrainJob *job = (EdgeloraTrainJob *)user_data;
  EdgeloraStatus st = edgelora_train_add_example(job, INSTRUCTION, "x", "approve");
  CHECK(st == EDGELORA_STATUS_INVALID_ARGUMENT && strstr(edgelora_last_error(), "running"), "a nested call: status %d", st);
  return false; /* stop */
}

static bool never_called(const EdgeloraTrainProgress *p, void *user_data) {
  (void)p;
  (void)user_data;
  CHECK(0, "a refused job ran a step");
  return false;
}

static void bad_input(void) {
  EdgeloraTrainJob *job = NULL;
  EdgeloraTrainParams p = params(NULL);
  /* A model path that is not a model. */
  const char *notes = path_in("notes.txt");
  FILE *f = fopen(notes, "w");
  fputs("not a model", f);
  fclose(f);
  EdgeloraStatus st = edgelora_train_open(notes, &p, &job);
  CHECK(st != EDGELORA_STATUS_OK && job == NULL && strstr(edgelora_last_error(), "notes.txt"), "a text file as model: status %d", st);
  /* An unwritable checkpoint directory (below a regular file: fails even as root). */
  char bad_ckpt[1300];
  snprintf(bad_ckpt, sizeof bad_ckpt, "%s/ckpt", notes);
  p.checkpoint_dir = bad_ckpt;
  st = edgelora_train_open(MODEL, &p, &job);
  CHECK(st == EDGELORA_STATUS_FORMAT && job == NULL && strstr(edgelora_last_error(), "checkpoint"), "unwritable checkpoint dir: status %d", st);
  /* An unknown precision; bf16 opens (emulated where the CPU lacks AVX512-BF16). */
  p = params(NULL);
  p.precision = 7;
  st = edgelora_train_open(MODEL, &p, &job);
  CHECK(st == EDGELORA_STATUS_INVALID_ARGUMENT && job == NULL && strstr(edgelora_last_error(), "precision 7"), "precision 7: status %d", st);
  p.precision = EDGELORA_PRECISION_BF16;
  st = edgelora_train_open(MODEL, &p, &job);
  CHECK(st == EDGELORA_STATUS_OK && job != NULL, "bf16: status %d", st);
  edgelora_train_close(job);
  job = NULL;
  /* Empty data, an example without an answer, a budget nothing fits. */
  p = params(NULL);
  p.max_memory_mb = 16;
  st = edgelora_train_open(MODEL, &p, &job);
  CHECK(st == EDGELORA_STATUS_OK, "open: status %d", st);
  st = edgelora_train_run(job, never_called, NULL);
  CHECK(st == EDGELORA_STATUS_INVALID_ARGUMENT && strstr(edgelora_last_error(), "no training examples"), "empty data: status %d", st);
  st = edgelora_train_add_example(job, INSTRUCTION, "Credit score: 700", "");
  CHECK(st == EDGELORA_STATUS_FORMAT && strstr(edgelora_last_error(), "output"), "no answer: status %d", st);
  st = edgelora_train_add_example(job, INSTRUCTION, NULL, "approve");
  CHECK(st == EDGELORA_STATUS_OK, "NULL input is allowed: status %d", st);
  st = edgelora_train_add_record_json(job, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", false);
  CHECK(st == EDGELORA_STATUS_FORMAT && strstr(edgelora_last_error(), "no assistant message"), "a chat record without an answer: status %d", st);
  st = edgelora_train_add_record_json(job, "{\"prompt\": \"Credit score: 800. Decision:\", \"completion\": \" approve\"}", false);
  CHECK(st == EDGELORA_STATUS_OK, "a prompt/completion record: status %d", st);
  st = edgelora_train_add_jsonl(job, path_in("missing.jsonl"));
  CHECK(st == EDGELORA_STATUS_FORMAT && strstr(edgelora_last_error(), "missing.jsonl"), "missing file: status %d", st);
  st = edgelora_train_run(job, never_called, NULL);
  CHECK(st == EDGELORA_STATUS_MEMORY_BUDGET && strstr(edgelora_last_error(), "16 MiB"), "budget: status %d", st);
  EdgeloraEvaluation ev;
  st = edgelora_train_evaluate(job, &ev);
  CHECK(st != EDGELORA_STATUS_OK && strstr(edgelora_last_error(), "evaluation"), "evaluate without eval data: status %d", st);
  edgelora_train_close(job);
  edgelora_train_close(NULL);
  edgelora_train_cancel(NULL);
  printf("bad input: typed errors\n");
}

int main(int argc, char **argv) {
  CHECK(argc == 3, "usage: test_train MODEL WORK_DIR");
  MODEL = argv[1];
  snprintf(WORK, sizeof WORK, "%s", argv[2]);

  killed_child_then_resume();
  bad_input();

  /* The uninterrupted run, with evaluation before and after. */
  EdgeloraTrainJob *job = open_job(path_in("straight.ckpt"), 8, 4, 0);
  EdgeloraEvaluation before, after;
  EdgeloraStatus st = edgelora_train_evaluate(job, &before);
  CHECK(st == EDGELORA_STATUS_OK && before.n_examples == 4, "evaluate before: status %d", st);
  Seen seen = {0, 0};
  st = edgelora_train_run(job, on_progress, &seen);
  CHECK(st == EDGELORA_STATUS_OK && seen.calls == STEPS, "run: status %d, %d callbacks", st, seen.calls);
  st = edgelora_train_evaluate(job, &after);
  CHECK(st == EDGELORA_STATUS_OK && after.loss < before.loss, "evaluation loss %.4f -> %.4f", before.loss, after.loss);
  printf("evaluation: loss %.4f -> %.4f, exact %.2f -> %.2f\n", before.loss, after.loss, before.exact, after.exact);
  st = edgelora_train_export(job, path_in("straight.gguf"), path_in("straight-peft"));
  CHECK(st == EDGELORA_STATUS_OK, "export: status %d", st);
  edgelora_train_close(job);

  /* Cancelled from a second thread after step 1, then continued. */
  job = open_job(path_in("cancelled.ckpt"), 8, 0, 0);
  Seen seen2 = {0, 0};
  Canceller c = {job, &seen2};
  pthread_t th;
  pthread_create(&th, NULL, cancel_after_first_step, &c);
  st = edgelora_train_run(job, on_progress, &seen2);
  pthread_join(th, NULL);
  CHECK(st == EDGELORA_STATUS_CANCELLED, "cancel from a thread: status %d", st);
  CHECK(seen2.calls >= 1 && seen2.calls < STEPS, "cancelled after %d steps", seen2.calls);
  char ckfile[1300];
  snprintf(ckfile, sizeof ckfile, "%s/checkpoint.safetensors", path_in("cancelled.ckpt"));
  CHECK(file_exists(ckfile), "no checkpoint after cancel");
  /* A call on the job from inside its own callback is refused; returning false stops. */
  st = edgelora_train_run(job, refuse_nested, job);
  CHECK(st == EDGELORA_STATUS_CANCELLED, "stop from the callback: status %d", st);
  st = edgelora_train_run(job, NULL, NULL);
  CHECK(st == EDGELORA_STATUS_OK, "continue: status %d", st);
  st = edgelora_train_export(job, path_in("cancelled.gguf"), NULL);
  CHECK(st == EDGELORA_STATUS_OK, "export cancelled: status %d", st);
  edgelora_train_close(job);
  printf("cancel: stopped after %d step(s), continued to the end\n", seen2.calls);

  /* Hot-load into an open runtime: the adapter changes the greedy answers. */
  EdgeloraRuntime *rt = NULL;
  EdgeloraRuntimeOptions o = edgelora_runtime_options_default();
  o.n_ctx = 512;
  st = edgelora_runtime_open(MODEL, &o, &rt);
  CHECK(st == EDGELORA_STATUS_OK, "runtime_open: status %d", st);
  st = edgelora_adapter_load(rt, "credit", path_in("straight.gguf"));
  CHECK(st == EDGELORA_STATUS_OK, "adapter_load: status %d", st);
  int differ = 0;
  char input[128];
  const char *answer;
  for (int i = 0; i < 4; i++) {
    record(200 + i, input, sizeof input, &answer);
    char *base = generate(rt, NULL, input);
    char *tuned = generate(rt, "credit", input);
    printf("  base %-24.24s | adapter %s\n", base, tuned);
    differ += strcmp(base, tuned) != 0;
    edgelora_string_free(base);
    edgelora_string_free(tuned);
  }
  CHECK(differ > 0, "the trained adapter answers as the base on every prompt");

  /* Versions: v1 and v2, roll back to v1 and hot-swap it in. */
  EdgeloraStore *store = NULL;
  st = edgelora_store_open(path_in("store"), &store);
  CHECK(st == EDGELORA_STATUS_OK, "store_open: status %d", st);
  uint32_t v = 0, cur = 0;
  char *p = NULL;
  st = edgelora_store_save(store, "credit", path_in("straight.gguf"), "{\"eval_loss\": 1.0}", &v, &p);
  CHECK(st == EDGELORA_STATUS_OK && v == 1 && p && strstr(p, "v1.gguf"), "store v1: status %d", st);
  edgelora_string_free(p);
  st = edgelora_store_save(store, "credit", path_in("resumed.gguf"), NULL, &v, NULL);
  CHECK(st == EDGELORA_STATUS_OK && v == 2, "store v2: status %d", st);
  char *json = NULL;
  st = edgelora_store_list(store, "credit", &cur, &json);
  CHECK(st == EDGELORA_STATUS_OK && cur == 2 && json && strstr(json, "\"parent\":1"), "list: %s", json ? json : "(null)");
  edgelora_string_free(json);
  st = edgelora_store_rollback(store, "credit", &v, &p);
  CHECK(st == EDGELORA_STATUS_OK && v == 1 && strstr(p, "v1.gguf"), "rollback: status %d", st);
  CHECK(edgelora_adapter_unload(rt, "credit") == EDGELORA_STATUS_OK, "unload");
  CHECK(edgelora_adapter_load(rt, "credit", p) == EDGELORA_STATUS_OK, "load v1 after roll-back");
  edgelora_string_free(p);
  st = edgelora_store_rollback(store, "credit", &v, NULL);
  CHECK(st == EDGELORA_STATUS_NOT_FOUND, "rollback past v1: status %d", st);
  st = edgelora_store_save(store, "../escape", path_in("straight.gguf"), NULL, NULL, NULL);
  CHECK(st == EDGELORA_STATUS_IO && strstr(edgelora_last_error(), "adapter name"), "bad name: status %d", st);
  st = edgelora_store_path(store, "credit", 7, &p);
  CHECK(st == EDGELORA_STATUS_NOT_FOUND, "missing version: status %d", st);
  edgelora_store_close(store);
  edgelora_runtime_close(rt);
  printf("all C training checks passed\n");
  return 0;
}
