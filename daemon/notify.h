/* notify.h — telling systemd how recalld is doing (sd_notify(3)'s protocol).
 *
 * Under a unit with Type=notify, systemd passes a datagram socket in $NOTIFY_SOCKET and
 * waits for "READY=1" before it counts the service as started; "STATUS=..." lines show in
 * `systemctl status`, "STOPPING=1" says a stop is under way. recalld sends:
 *
 *   READY=1, STATUS=listening on ...; loading the weights   when it serves requests
 *                                                           (main.c, just before its loop)
 *   STATUS=serving N sessions on DEVICE                     once the weights are in, and
 *                                                           after a job when N changed
 *   STATUS=cannot load the weights: ...                     when that failed (it then exits 1)
 *   STOPPING=1, STATUS=stopping                             on SIGTERM / SIGINT
 *
 * The protocol is written out here (one datagram to a unix socket) rather than linked from
 * libsystemd: systemd documents it as stable, it is a dozen lines, and it spares every
 * build, CI image and sanitizer run a library recalld needs for nothing else.
 *
 * Without $NOTIFY_SOCKET (not run by systemd) every call does nothing. Thread-safe (each
 * message opens its own socket). */
#ifndef RECALL_DAEMON_NOTIFY_H
#define RECALL_DAEMON_NOTIFY_H

/* Sends state, newline-separated "KEY=value" assignments, to $NOTIFY_SOCKET (an absolute
 * path, or '@' for Linux's abstract namespace). Returns 1 when sent, 0 when there is no
 * socket to tell, -1 when sending failed (errno set; recalld carries on: systemd's own
 * timeout then says what went wrong). */
int daemon_notify(const char *state);

/* daemon_notify of "STATUS=" + the formatted text (a newline in it is replaced: it would
 * start another assignment). */
int daemon_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
