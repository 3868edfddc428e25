/* metrics.c — the daemon's part of GET /metrics: what only its state knows.
 *
 * The gateway writes the families it can get from a Stats answer (sessions, tokens, memory
 * per tier, budgets, loads, evictions) and the request counters (http_metrics.h); this adds,
 * at each scrape, the figures that live in daemon_t: whether the weights are in, the job
 * queue, how long ingest and its commits took (so rate(recall_ingest_tokens_total) /
 * rate(recall_ingest_seconds_total) is the ingest speed while ingesting), the last ingest's
 * speed, the worker's prefill and append latency, and the GPU's memory as the worker last
 * read it. Names are recall_*; every family has HELP and TYPE. */
#include "daemon/daemon.h"

void daemon_metrics_write(http_buf_t *b, void *arg)
{
    daemon_t *d = arg;
    pthread_mutex_lock(&d->mu);
    const int ready = daemon_ready(d), failed = d->load_failed;
    const size_t queued = d->queued;
    const int running = d->job_running;
    const uint64_t commits = d->commits;
    const double commit_s = d->commit_seconds, append_s = d->append_seconds;
    const double tps = d->ingest_last_tps;
    pthread_mutex_unlock(&d->mu);
    const uint64_t gpu_total = __atomic_load_n(&d->gpu_mem_total, __ATOMIC_RELAXED);
    const uint64_t gpu_free = __atomic_load_n(&d->gpu_mem_free, __ATOMIC_RELAXED);

    http_metrics_head(b, "recall_ready", "gauge",
                      "1 once the weights are loaded and jobs run; 0 while loading (or failed).");
    http_metrics_sample(b, "recall_ready", "", ready && !failed);
    http_metrics_head(b, "recall_queue_jobs", "gauge",
                      "Jobs (ingest, ask, score, verify) waiting for the worker.");
    http_metrics_sample(b, "recall_queue_jobs", "", (double)queued);
    http_metrics_head(b, "recall_worker_busy", "gauge", "1 while the worker runs a job.");
    http_metrics_sample(b, "recall_worker_busy", "", running ? 1 : 0);
    http_metrics_head(b, "recall_ingest_seconds_total", "counter",
                      "Seconds the worker spent appending tokens durably (forward passes and "
                      "commits); rate(recall_ingest_tokens_total) / rate(this) is the ingest "
                      "speed while ingesting.");
    http_metrics_sample(b, "recall_ingest_seconds_total", "", append_s);
    http_metrics_head(b, "recall_ingest_tokens_per_second", "gauge",
                      "Tokens per second of the last durable append (an Ingest chunk or an "
                      "Ask with append); 0 before the first.");
    http_metrics_sample(b, "recall_ingest_tokens_per_second", "", tps);
    http_metrics_head(b, "recall_commits_total", "counter",
                      "Durable commits (row files synced, then one LMDB transaction).");
    http_metrics_sample(b, "recall_commits_total", "", (double)commits);
    http_metrics_head(b, "recall_commit_seconds_total", "counter",
                      "Seconds spent in durable commits (fsync and LMDB).");
    http_metrics_sample(b, "recall_commit_seconds_total", "", commit_s);
    http_metrics_head(b, "recall_ingest_append_seconds", "histogram",
                      "Time of each durable append: its windows' forward passes and its commit.");
    http_metrics_histogram(b, "recall_ingest_append_seconds", "", &d->metrics.ingest_append);
    http_metrics_head(b, "recall_ask_prefill_seconds", "histogram",
                      "Time from an Ask's start on the worker to its first token (the forward "
                      "pass over the session's tail and the question).");
    http_metrics_histogram(b, "recall_ask_prefill_seconds", "", &d->metrics.ask_prefill);
    http_metrics_head(b, "recall_gpu_device_memory_bytes", "gauge",
                      "The GPU's memory as the worker last read it (after loading the weights "
                      "and after each job): total, free, and used by everything (weights, "
                      "sessions' rows, scratch, other processes); 0 on the CPU backend.");
    http_metrics_sample(b, "recall_gpu_device_memory_bytes", "state=\"total\"", (double)gpu_total);
    http_metrics_sample(b, "recall_gpu_device_memory_bytes", "state=\"free\"", (double)gpu_free);
    http_metrics_sample(b, "recall_gpu_device_memory_bytes", "state=\"used\"",
                        (double)(gpu_total - (gpu_free < gpu_total ? gpu_free : gpu_total)));
}
