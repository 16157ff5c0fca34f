#include "CNBDSystemd.h"

#include <systemd/sd-daemon.h>

#include <stdlib.h>

int CNBDSystemd_listen_fds(void) { return sd_listen_fds(1); }

int CNBDSystemd_listen_fds_with_names(char ***names) { return sd_listen_fds_with_names(1, names); }

void CNBDSystemd_free_names(char **names)
{
  if (names == NULL)
    return;
  for (char **p = names; *p != NULL; p++)
    free(*p);
  free(names);
}

int CNBDSystemd_notify(const char *state) { return sd_notify(0, state); }

uint64_t CNBDSystemd_watchdog_usec(void)
{
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0)
    return 0;
  return usec;
}
