#include "CNBDSystemd.h"

#include <systemd/sd-daemon.h>

int CNBDSystemd_listen_fds(void) { return sd_listen_fds(1); }

int CNBDSystemd_notify(const char *state) { return sd_notify(0, state); }

uint64_t CNBDSystemd_watchdog_usec(void)
{
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0)
    return 0;
  return usec;
}
