#include "CNBDSystemd.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

/* libsystemd and its dependencies (libgcrypt, libzstd, liblzma, libcap, ...) cost start-up
 * time in every run, but only servers that notify a service manager (NOTIFY_SOCKET) need
 * them: the library is loaded with dlopen on first use. The prototypes still come from <systemd/sd-daemon.h>. */
static struct {
  int (*notify) (int, const char *);
  int (*watchdog_enabled) (int, uint64_t *);
  char error[256];
} sd;
static pthread_once_t sd_once = PTHREAD_ONCE_INIT;

static void load_libsystemd(void)
{
  void *h = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    snprintf(sd.error, sizeof sd.error, "%s", dlerror());
    return;
  }
  sd.notify = (int (*) (int, const char *)) dlsym(h, "sd_notify");
  sd.watchdog_enabled = (int (*) (int, uint64_t *)) dlsym(h, "sd_watchdog_enabled");
  if (!sd.notify || !sd.watchdog_enabled) {
    snprintf(sd.error, sizeof sd.error, "libsystemd.so.0: missing sd-daemon symbols");
    sd.notify = NULL;
    sd.watchdog_enabled = NULL;
  }
}

static int loaded(void)
{
  pthread_once(&sd_once, load_libsystemd);
  return sd.notify != NULL;
}

const char *CNBDSystemd_load_error(void)
{
  return loaded() ? NULL : sd.error;
}

int CNBDSystemd_notify(const char *state)
{
  if (!loaded())
    return -ELIBACC;
  return sd.notify(0, state);
}

uint64_t CNBDSystemd_watchdog_usec(void)
{
  uint64_t usec = 0;
  if (!loaded() || sd.watchdog_enabled(0, &usec) <= 0)
    return 0;
  return usec;
}
