/* tiers.h — where each open session's memory rows should live, under daemon-wide budgets.
 *
 * Rows move down a tier, never sideways: GPU -> host (the device mirror is dropped; the
 * host map stays) and host -> disk (the map is dropped too). Moving up happens when a
 * session is used: its rows come back in on its next forward. This module only keeps the
 * books and picks victims: a slot per open session with its bytes in the GPU and host tiers,
 * a pin count (a slot pinned for a running forward is never picked) and a last-use stamp
 * (the least recently used go first). The caller moves the rows and reports the new byte
 * counts with memory_tiers_set.
 *
 * Budgets of 0 mean no limit. Pure bookkeeping: no I/O, no locks; the caller serializes
 * every call (the daemon's worker makes them all). */
#ifndef RECALL_MEMORY_TIERS_H
#define RECALL_MEMORY_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

typedef struct memory_tiers memory_tiers_t;

/* One session's entry; embedded in the caller's session object, zero-initialized before
 * memory_tiers_track, read-only to the caller afterwards (use the calls below). */
typedef struct tiers_slot {
    size_t host_bytes, gpu_bytes;
    unsigned pins;
    uint64_t last_use;
    int tracked;
} tiers_slot_t;

typedef enum tiers_level { TIERS_GPU = 0, TIERS_HOST = 1, TIERS_DISK = 2 } tiers_level_t;

/* A move the caller should make: slot's rows go down to `to` (TIERS_HOST: drop its GPU copy;
 * TIERS_DISK: drop both). */
typedef struct tiers_move {
    tiers_slot_t *slot;
    tiers_level_t to;
} tiers_move_t;

rc_t memory_tiers_create(size_t host_budget, size_t gpu_budget, memory_tiers_t **out);
void memory_tiers_destroy(memory_tiers_t **t);
size_t memory_tiers_host_budget(const memory_tiers_t *t);
size_t memory_tiers_gpu_budget(const memory_tiers_t *t);
/* Sets the GPU budget (0: none), for a daemon that learns it once its backend is open.
 * Moves nothing: the next plan works against it. */
void memory_tiers_set_gpu_budget(memory_tiers_t *t, size_t gpu_budget);

/* Starts / stops counting a slot (untrack before the slot's memory goes away). */
rc_t memory_tiers_track(memory_tiers_t *t, tiers_slot_t *s);
void memory_tiers_untrack(memory_tiers_t *t, tiers_slot_t *s);

/* Marks a use now (the newest slot is evicted last). */
void memory_tiers_touch(memory_tiers_t *t, tiers_slot_t *s);
void memory_tiers_pin(tiers_slot_t *s);
void memory_tiers_unpin(tiers_slot_t *s);

/* The slot's bytes in each tier now. */
void memory_tiers_set(memory_tiers_t *t, tiers_slot_t *s, size_t host_bytes, size_t gpu_bytes);

/* Totals over every tracked slot. */
void memory_tiers_used(const memory_tiers_t *t, size_t *host_bytes, size_t *gpu_bytes);

/* The moves that make room for `self` to hold host_need and gpu_need bytes (its whole size
 * in each tier, not an increment): least recently used unpinned slots other than self, GPU
 * copies first for the GPU budget, then whole sessions for the host budget, until
 * used - self's current + need fits or nothing is left to move. Writes at most cap moves
 * and returns how many; *fits says whether the budgets then hold (a session larger than a
 * budget still runs: from the lower tier, as the backend can). Nothing is changed: the
 * caller makes each move and calls memory_tiers_set. */
size_t memory_tiers_plan(const memory_tiers_t *t, const tiers_slot_t *self, size_t host_need,
                         size_t gpu_need, tiers_move_t *moves, size_t cap, int *fits);

/* Slots tracked (moves never exceed this many). */
size_t memory_tiers_count(const memory_tiers_t *t);

/* Inside one stream: the spill point of a knn stream's GPU tier (memory/gpu_tier.h) for
 * `rows` memory rows when the device holds at most hot_cap rows: rows
 * [0, spill) are spilled, [spill, rows) hot. 0 while rows <= hot_cap. Beyond that, the
 * smallest multiple of the step S = max(window, hot_cap / 2 rounded down to whole windows)
 * that leaves at most hot_cap rows hot: the split moves in whole windows, about half the
 * hot tier at a time (so a spill moves the newer rows to the front of the device buffer in
 * at most a couple of non-overlapping copies, and happens once per ~hot_cap / 2 rows).
 * A function of the row count alone, so a restarted stream splits where the old one did.
 * Monotone in rows. With hot_cap >= window at least one row stays hot; a smaller hot_cap
 * (refused by model_stream_opts_resolve) is clamped so the result never exceeds rows. */
size_t memory_tiers_spill_rows(size_t rows, size_t hot_cap, size_t window);

#endif
