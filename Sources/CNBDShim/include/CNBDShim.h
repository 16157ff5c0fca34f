#ifndef CNBDSHIM_H
#define CNBDSHIM_H

#include <stdint.h>
#include <sys/types.h>
#include <signal.h>

/* Thin wrappers for libc calls Swift cannot make directly (variadic functions,
 * macros, enum-typed flags). Each returns what the wrapped call returns and
 * leaves errno as the call set it. */

/* prctl(PR_SET_PDEATHSIG, sig). */
int CNBDShim_set_parent_death_signal(int sig);

/* accept4(fd, NULL, NULL, SOCK_CLOEXEC). */
int CNBDShim_accept_cloexec(int fd);

/* socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0). */
int CNBDShim_stream_socket(int domain);

/* pipe2(fds, O_CLOEXEC). */
int CNBDShim_pipe_cloexec(int fds[2]);

/* eventfd(0, EFD_CLOEXEC). */
int CNBDShim_eventfd(void);

/* recv(fd, buf, len, MSG_DONTWAIT). */
ssize_t CNBDShim_recv_nowait(int fd, void *buf, size_t len);

/* 1 if poll(2) says the peer of `fd` has hung up or shut down its sending side (POLLRDHUP,
 * POLLHUP, POLLERR; also once receives were shut down here) or `fd` is not open (POLLNVAL),
 * 0 if not; never waits. */
int CNBDShim_peer_hung_up(int fd);

/* pipe2(fds, O_CLOEXEC | O_NONBLOCK) whose capacity is raised to 256 KiB where the limits allow
 * (F_SETPIPE_SZ; best effort), for moving payloads with splice. */
int CNBDShim_splice_pipe(int fds[2]);

/* splice(fd, NULL, pipe_fd, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK): moves what
 * has arrived on a socket into a pipe. It never waits on a Unix socket; on a blocking
 * TCP socket it waits if nothing has arrived (poll first). */
ssize_t CNBDShim_splice_nowait(int fd, int pipe_fd, size_t len);

/* splice(pipe_fd, NULL, fd, &offset, len, SPLICE_F_MOVE): writes pipe contents to a file. */
ssize_t CNBDShim_splice_to_file(int pipe_fd, int fd, int64_t offset, size_t len);

/* A listening AF_VSOCK stream socket (close-on-exec) bound to any CID and port;
 * the descriptor, or -1 with errno set. */
int CNBDShim_vsock_listen(unsigned int port);

/* The address family of socket fd (AF_UNIX, AF_INET, ...), or -1 if it is not a socket. */
int CNBDShim_socket_domain(int fd);

/* send(fd, buf, len, MSG_MORE | MSG_NOSIGNAL): more follows at once (TCP coalesces it). */
ssize_t CNBDShim_send_more(int fd, const void *buf, size_t len);

/* signalfd(-1, mask, SFD_CLOEXEC) for the given signals (terminated by 0);
 * the signals are also blocked in the calling thread. */
int CNBDShim_signalfd_for(const int *signals);

/* Reads one siginfo from a signalfd; returns the signal number, 0 on EAGAIN, -1 on error. */
int CNBDShim_signalfd_read(int fd);

/* The wait status macros. */
int CNBDShim_wifexited(int status);
int CNBDShim_wexitstatus(int status);
int CNBDShim_wifsignaled(int status);
int CNBDShim_wtermsig(int status);
int CNBDShim_wifstopped(int status);

/* posix_spawn of /bin/sh -c command with the default signal dispositions and an
 * empty signal mask, so the child does not inherit the server's blocked or
 * ignored signals. The child leads a new process group; if terminal_fd >= 0 that
 * group becomes the terminal's foreground group. Returns 0 and sets *pid, or an
 * errno value. */
int CNBDShim_spawn_shell(const char *command, pid_t *pid, char *const envp[], int terminal_fd);
/* Starts `/bin/sh -c script nbdkit-captive-watch argument` as the --run command's watcher:
   `watch_fd` as its descriptor 3, /dev/null as 0-2, an empty environment, default signal
   handling, in process group `group`. Returns 0 or an errno. */
int CNBDShim_spawn_watcher(const char *script, const char *argument, int watch_fd, pid_t group, pid_t *pid);

/* An anonymous in-memory file (memfd_create, close-on-exec) of exactly size bytes, all of
 * them holes, sealed so that its size never changes; the descriptor, or -1 with errno set. */
int CNBDShim_memory_file(const char *name, int64_t size);

/* Maps size bytes of fd shared and writable, each page locked into RAM as it is first touched
 * (mlock2 MLOCK_ONFAULT) and none populated now, even under mlockall(MCL_FUTURE): the mapping
 * starts inaccessible, which populating skips. NULL with errno set on failure. */
void *CNBDShim_map_locking_on_fault(int fd, size_t size);

/* Reads one byte of every page of [p, p+length), so that pages not yet mapped in are faulted in
 * by a read fault, which also maps the neighbouring pages the file already holds (fault-around),
 * where a write fault maps one page. */
void CNBDShim_touch_pages(const void *p, size_t length);

/* The machine's RAM in bytes, with its swap added if with_swap; 0 if unknown (sysinfo). */
uint64_t CNBDShim_total_memory(int with_swap);

/* fallocate with the named mode; return as fallocate(2). */
int CNBDShim_punch_hole(int fd, int64_t offset, int64_t length);
int CNBDShim_zero_range(int fd, int64_t offset, int64_t length);
/* Writes the dirty pages of [offset, offset+length) of fd to its disk and waits for them
 * (sync_file_range), so that they can then be dropped from the page cache; 0 or -1 with errno. */
int CNBDShim_write_back(int fd, int64_t offset, int64_t length);

/* ioctl(fd, BLKGETSIZE64): the size of a block device, or -1. */
int64_t CNBDShim_block_device_size(int fd);

/* How many CPUs the calling thread may run on (its affinity mask), at least 1. */
int CNBDShim_usable_cpus(void);

/* 1 if fd's file system keeps its files in memory (tmpfs, ramfs), 0 if not, -1 on error. */
int CNBDShim_file_system_in_memory(int fd);

/* The current errno. */
int CNBDShim_errno(void);

/* The kernel thread id of the calling thread, for log lines. */
long CNBDShim_gettid(void);



/* syslog(priority, "%s", message) as "nbdkit[PID]" in the daemon facility, as nbdkit logs. */
void CNBDShim_syslog(int priority, const char *message);
#endif
