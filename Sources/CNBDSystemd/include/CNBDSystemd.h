#ifndef CNBDSYSTEMD_H
#define CNBDSYSTEMD_H

#include <stdint.h>

/* Thin wrappers over libsystemd's sd-daemon calls. libsystemd is loaded on first use; every
 * call returns -ELIBACC (or 0 for the watchdog) when it cannot be loaded. */

/* NULL once libsystemd is loaded, otherwise why it could not be. */
const char *CNBDSystemd_load_error(void);

/* sd_notify(0, state): > 0 sent, 0 if NOTIFY_SOCKET is unset, negative errno on failure. */
int CNBDSystemd_notify(const char *state);

/* sd_watchdog_enabled(0, &usec): the watchdog interval in microseconds, or 0 if none. */
uint64_t CNBDSystemd_watchdog_usec(void);

#endif
