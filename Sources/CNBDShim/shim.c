#define _GNU_SOURCE
#include "CNBDShim.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/vm_sockets.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <syslog.h>

int CNBDShim_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }

int CNBDShim_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int CNBDShim_stream_socket(int domain) { return socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0); }

int CNBDShim_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int CNBDShim_splice_pipe(int fds[2])
{
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) == -1)
    return -1;
  (void) fcntl(fds[1], F_SETPIPE_SZ, 256 * 1024);
  return 0;
}

ssize_t CNBDShim_splice_nowait(int fd, int pipe_fd, size_t len)
{
  return splice(fd, NULL, pipe_fd, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

ssize_t CNBDShim_splice_to_file(int pipe_fd, int fd, int64_t offset, size_t len)
{
  loff_t position = offset;
  return splice(pipe_fd, NULL, fd, &position, len, SPLICE_F_MOVE);
}

int CNBDShim_vsock_listen(unsigned int port)
{
  struct sockaddr_vm address = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return -1;
  if (bind(fd, (struct sockaddr *) &address, sizeof address) == -1 || listen(fd, SOMAXCONN) == -1) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

int CNBDShim_socket_domain(int fd)
{
  int domain;
  socklen_t size = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) == -1)
    return -1;
  return domain;
}

int CNBDShim_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

ssize_t CNBDShim_recv_nowait(int fd, void *buf, size_t len) { return recv(fd, buf, len, MSG_DONTWAIT); }

int CNBDShim_peer_hung_up(int fd)
{
  struct pollfd entry = { .fd = fd, .events = POLLRDHUP };
  return poll(&entry, 1, 0) == 1 && (entry.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

int CNBDShim_usable_cpus(void)
{
  cpu_set_t set;
  long online;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
  /* More CPUs than a cpu_set_t holds: count them all. */
  online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? (int) online : 1;
}

ssize_t CNBDShim_send_more(int fd, const void *buf, size_t len)
{
  return send(fd, buf, len, MSG_MORE | MSG_NOSIGNAL);
}

int CNBDShim_signalfd_for(const int *signals)
{
  sigset_t mask;
  sigemptyset(&mask);
  for (; *signals != 0; signals++)
    sigaddset(&mask, *signals);
  if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0)
    return -1;
  return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}

int CNBDShim_signalfd_read(int fd)
{
  struct signalfd_siginfo info;
  ssize_t r = read(fd, &info, sizeof info);
  if (r == (ssize_t) sizeof info)
    return (int) info.ssi_signo;
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return 0;
  return -1;
}

int CNBDShim_wifexited(int status) { return WIFEXITED(status); }
int CNBDShim_wexitstatus(int status) { return WEXITSTATUS(status); }
int CNBDShim_wifsignaled(int status) { return WIFSIGNALED(status); }
int CNBDShim_wtermsig(int status) { return WTERMSIG(status); }
int CNBDShim_wifstopped(int status) { return WIFSTOPPED(status); }

/* Starts /bin/sh with `argv` and `envp`, default signal handling and an empty signal mask, in
   process group `group` (0: a new one of its own), after `actions`; destroys `actions`. */
static int spawn_shell_in_group(pid_t *pid, posix_spawn_file_actions_t *actions, pid_t group,
                                char *const argv[], char *const envp[])
{
  posix_spawnattr_t attr;
  sigset_t empty, all;
  int r;

  if ((r = posix_spawnattr_init(&attr)) != 0) {
    posix_spawn_file_actions_destroy(actions);
    return r;
  }
  sigemptyset(&empty);
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, group);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  r = posix_spawn(pid, "/bin/sh", actions, &attr, argv, envp);
  posix_spawn_file_actions_destroy(actions);
  posix_spawnattr_destroy(&attr);
  return r;
}

int CNBDShim_spawn_shell(const char *command, pid_t *pid, char *const envp[], int terminal_fd)
{
  posix_spawn_file_actions_t actions;
  int r;

  if ((r = posix_spawn_file_actions_init(&actions)) != 0)
    return r;
  if (terminal_fd >= 0)
    posix_spawn_file_actions_addtcsetpgrp_np(&actions, terminal_fd);
  char *argv[] = { "/bin/sh", "-c", (char *) command, NULL };
  return spawn_shell_in_group(pid, &actions, 0, argv, envp);
}

int CNBDShim_spawn_watcher(const char *script, const char *argument, int watch_fd, pid_t group, pid_t *pid)
{
  posix_spawn_file_actions_t actions;
  int r;

  if ((r = posix_spawn_file_actions_init(&actions)) != 0)
    return r;
  posix_spawn_file_actions_adddup2(&actions, watch_fd, 3);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDWR, 0);
  posix_spawn_file_actions_adddup2(&actions, 0, 1);
  posix_spawn_file_actions_adddup2(&actions, 0, 2);
  char *argv[] = { "/bin/sh", "-c", (char *) script, "nbdkit-captive-watch", (char *) argument, NULL };
  char *envp[] = { NULL };
  return spawn_shell_in_group(pid, &actions, group, argv, envp);
}

int CNBDShim_punch_hole(int fd, int64_t offset, int64_t length)
{
  return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int CNBDShim_zero_range(int fd, int64_t offset, int64_t length)
{
  return fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length);
}

int64_t CNBDShim_block_device_size(int fd)
{
  uint64_t size;
  if (ioctl(fd, BLKGETSIZE64, &size) == -1)
    return -1;
  return (int64_t) size;
}

int CNBDShim_file_system_in_memory(int fd)
{
  struct statfs fs;
  if (fstatfs(fd, &fs) == -1)
    return -1;
  return fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
}

int CNBDShim_memory_file(const char *name, int64_t size)
{
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd == -1)
    return -1;
  if (ftruncate(fd, size) == -1 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == -1) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

void *CNBDShim_map_locking_on_fault(int fd, size_t size)
{
  void *p = mmap(NULL, size, PROT_NONE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED)
    return NULL;
  if (mlock2(p, size, MLOCK_ONFAULT) == -1 || mprotect(p, size, PROT_READ | PROT_WRITE) == -1) {
    int e = errno;
    munmap(p, size);
    errno = e;
    return NULL;
  }
  return p;
}

void CNBDShim_touch_pages(const void *p, size_t length)
{
  const volatile char *c = p;
  if (length == 0)
    return;
  (void) c[0];
  size_t first = 4096 - ((uintptr_t) p & 4095);
  for (size_t i = first; i < length; i += 4096)
    (void) c[i];
}

uint64_t CNBDShim_total_memory(int with_swap)
{
  struct sysinfo info;
  if (sysinfo(&info) == -1)
    return 0;
  return ((uint64_t) info.totalram + (with_swap ? (uint64_t) info.totalswap : 0)) * info.mem_unit;
}

int CNBDShim_write_back(int fd, int64_t offset, int64_t length)
{
  return sync_file_range(fd, offset, length,
                         SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
}

int CNBDShim_errno(void) { return errno; }

long CNBDShim_gettid(void) { return (long) syscall(SYS_gettid); }

void CNBDShim_syslog(int priority, const char *message)
{
  openlog("nbdkit", LOG_PID, LOG_DAEMON);
  syslog(priority, "%s", message);
}

