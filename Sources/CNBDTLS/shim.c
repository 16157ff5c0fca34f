#include "CNBDTLS.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <sys/auxv.h>
#include <asm/hwcap.h>
#endif

struct CNBDTLS_credentials {
  int is_psk;
  gnutls_certificate_credentials_t x509;
  gnutls_psk_server_credentials_t psk;
  gnutls_priority_t priority;
};

/* The receive side reads ahead: GnuTLS asks for each record's 5-byte header and then its body,
 * two system calls per record, so small records are served from one recv into `ahead` instead
 * (many at a time when a client pipelines requests). Bodies too large for that go straight
 * into GnuTLS's buffer. Only the receiving thread touches these fields. */
struct CNBDTLS_session {
  gnutls_session_t session;
  /* Held around every call into the session once it carries records: GnuTLS lets one thread
   * receive while another sends, except that receiving a TLS 1.3 KeyUpdate changes the key
   * state (epochs) a send in progress uses, and one asking for ours schedules our new sending
   * keys for the next send: a record another thread was encrypting came out corrupt. Neither
   * side waits for the socket holding it: receives poll outside it, and sends hold it while a
   * record is made and handed to the socket as far as it takes it (`keep_unsent`), then write
   * the rest without it. (A receive never pushes on this server: GnuTLS 3.7 sends no alert
   * or handshake message from gnutls_record_recv here.) */
  pthread_mutex_t lock;
  int read_fd;
  int write_fd;
  /* Set while a record is sent under the lock: the push function then never waits; what the
   * socket can't take now is kept in `unsent` (in order), and the sender writes it out after
   * releasing the lock, so a receive (which the client may need before it reads replies) is
   * never held up by a socket that is full. Little is kept (a record or two, and a KeyUpdate):
   * each sender empties it before its next record, and senders take turns (the connection's
   * write lock). */
  int keep_unsent;
  char *unsent;
  size_t unsent_length, unsent_capacity;
  /* Set once kept bytes could not be written: the stream has a gap, so nothing more is sent. */
  int broken;
  /* Set while CNBDTLS_recv gathers further records: the pull function then reports EAGAIN
   * instead of waiting for more. */
  int no_wait;
  /* Set when the pull found nothing to read (so GNUTLS_E_AGAIN means: wait for the socket, not
   * that GnuTLS only handled a handshake message, such as a KeyUpdate, and has more). */
  int pull_found_nothing;
  /* End of file (0) or an errno met by a pull, held back (the pull says EAGAIN, now and from
   * then on): given to GnuTLS, it would end the session at once, and replies to what came before
   * it, which other threads may still be sending, could not go out. CNBDTLS_recv and
   * CNBDTLS_handshake return it themselves. -1: none. */
  int held_pull_result;
  /* GnuTLS's own result (a record that fails to decrypt, close_notify) met while gathering
   * further records, returned by the next CNBDTLS_recv. */
  int has_deferred;
  ssize_t deferred;
  size_t ahead_start, ahead_end;
  char ahead[16 * 1024];
  char description[128];
};

/* GnuTLS and the libraries behind it (p11-kit, nettle, gmp, libtasn1, ...) cost about a
 * millisecond of start-up in every run, but only servers with TLS credentials use them: the
 * library is loaded with dlopen when TLS is first set up (CNBDTLS_global_init). Prototypes and
 * constants still come from <gnutls/gnutls.h>. */
#define CNBDTLS_FUNCTIONS(X) \
  X(gnutls_bye) \
  X(gnutls_certificate_allocate_credentials) \
  X(gnutls_certificate_free_credentials) \
  X(gnutls_certificate_server_set_request) \
  X(gnutls_certificate_set_known_dh_params) \
  X(gnutls_certificate_set_x509_crl_file) \
  X(gnutls_certificate_set_x509_key_file) \
  X(gnutls_certificate_set_x509_trust_file) \
  X(gnutls_credentials_set) \
  X(gnutls_deinit) \
  X(gnutls_error_is_fatal) \
  X(gnutls_global_init) \
  X(gnutls_handshake) \
  X(gnutls_handshake_set_timeout) \
  X(gnutls_init) \
  X(gnutls_priority_deinit) \
  X(gnutls_priority_init) \
  X(gnutls_priority_set) \
  X(gnutls_psk_allocate_server_credentials) \
  X(gnutls_psk_free_server_credentials) \
  X(gnutls_psk_set_server_credentials_file) \
  X(gnutls_record_check_pending) \
  X(gnutls_record_cork) \
  X(gnutls_record_recv) \
  X(gnutls_record_send) \
  X(gnutls_record_uncork) \
  X(gnutls_session_get_desc) \
  X(gnutls_session_set_verify_cert) \
  X(gnutls_strerror) \
  X(gnutls_transport_set_int2) \
  X(gnutls_transport_set_ptr2) \
  X(gnutls_transport_set_pull_function) \
  X(gnutls_transport_set_pull_timeout_function) \
  X(gnutls_transport_set_vec_push_function) \

static struct {
#define CNBDTLS_POINTER(name) __typeof__(name) *name;
  CNBDTLS_FUNCTIONS(CNBDTLS_POINTER)
#undef CNBDTLS_POINTER
  gnutls_free_function gnutls_free;
  int loaded;
  char error[256];
} tls;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void load_gnutls(void)
{
  void *h = dlopen("libgnutls.so.30", RTLD_NOW | RTLD_LOCAL);
  gnutls_free_function *free_pointer;

  if (h == NULL) {
    snprintf(tls.error, sizeof tls.error, "%s", dlerror());
    return;
  }
#define CNBDTLS_LOOKUP(name) \
  if ((tls.name = (__typeof__(name) *) dlsym(h, #name)) == NULL) { \
    snprintf(tls.error, sizeof tls.error, "libgnutls.so.30: no symbol %s", #name); \
    dlclose(h); \
    return; \
  }
  CNBDTLS_FUNCTIONS(CNBDTLS_LOOKUP)
#undef CNBDTLS_LOOKUP
  /* gnutls_free is a variable holding the deallocator, not a function. */
  if ((free_pointer = (gnutls_free_function *) dlsym(h, "gnutls_free")) == NULL) {
    snprintf(tls.error, sizeof tls.error, "libgnutls.so.30: no symbol gnutls_free");
    dlclose(h);
    return;
  }
  tls.gnutls_free = *free_pointer;
  tls.loaded = 1;
}

const char *CNBDTLS_load_error(void)
{
  pthread_once(&tls_once, load_gnutls);
  return tls.loaded ? NULL : tls.error;
}

int CNBDTLS_global_init(void)
{
  if (CNBDTLS_load_error() != NULL) return GNUTLS_E_INTERNAL_ERROR;
  return tls.gnutls_global_init();
}

const char *CNBDTLS_strerror(int code)
{
  return tls.loaded ? tls.gnutls_strerror(code) : "GnuTLS is not loaded";
}

int CNBDTLS_cpu_accelerates_aes_gcm(void)
{
#if defined(__x86_64__) || defined(__i386__)
  unsigned int a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  return (c & bit_AES) && (c & bit_PCLMUL);
#elif defined(__aarch64__)
  unsigned long hw = getauxval(AT_HWCAP);
  return (hw & HWCAP_AES) && (hw & HWCAP_PMULL);
#else
  return 0;
#endif
}

CNBDTLS_credentials *CNBDTLS_credentials_x509(const char *dir, const char *priority, int *code,
                                              char *failed_file, size_t failed_file_len)
{
  char ca[4096], cert[4096], key[4096], crl[4096];
  CNBDTLS_credentials *c = calloc(1, sizeof *c);
  int r;

  if (c == NULL) { *code = GNUTLS_E_MEMORY_ERROR; return NULL; }
  snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir);
  snprintf(cert, sizeof cert, "%s/server-cert.pem", dir);
  snprintf(key, sizeof key, "%s/server-key.pem", dir);
  snprintf(crl, sizeof crl, "%s/ca-crl.pem", dir);

  if ((r = tls.gnutls_priority_init(&c->priority, priority, NULL)) < 0) goto fail_priority;
  if ((r = tls.gnutls_certificate_allocate_credentials(&c->x509)) < 0) goto fail_nofile;
  if ((r = tls.gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM)) < 0) {
    snprintf(failed_file, failed_file_len, "%s", ca);
    goto fail;
  }
  if (access(crl, R_OK) == 0 && (r = tls.gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM)) < 0) {
    snprintf(failed_file, failed_file_len, "%s", crl);
    goto fail;
  }
  if ((r = tls.gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM)) < 0) {
    snprintf(failed_file, failed_file_len, "%s and %s", cert, key);
    goto fail;
  }
  /* For DHE key exchanges with clients that don't name an FFDHE group (TLS 1.2). */
  (void) tls.gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
  return c;

 fail_priority:
  snprintf(failed_file, failed_file_len, "priority %s", priority);
  goto fail;
 fail_nofile:
  snprintf(failed_file, failed_file_len, "%s", dir);
 fail:
  *code = r;
  CNBDTLS_credentials_free(c);
  return NULL;
}

CNBDTLS_credentials *CNBDTLS_credentials_psk(const char *file, const char *priority, int *code)
{
  CNBDTLS_credentials *c = calloc(1, sizeof *c);
  int r;

  if (c == NULL) { *code = GNUTLS_E_MEMORY_ERROR; return NULL; }
  c->is_psk = 1;
  if ((r = tls.gnutls_priority_init(&c->priority, priority, NULL)) < 0 ||
      (r = tls.gnutls_psk_allocate_server_credentials(&c->psk)) < 0 ||
      (r = tls.gnutls_psk_set_server_credentials_file(c->psk, file)) < 0) {
    *code = r;
    CNBDTLS_credentials_free(c);
    return NULL;
  }
  return c;
}

void CNBDTLS_credentials_free(CNBDTLS_credentials *c)
{
  if (c == NULL) return;
  if (c->x509) tls.gnutls_certificate_free_credentials(c->x509);
  if (c->psk) tls.gnutls_psk_free_server_credentials(c->psk);
  if (c->priority) tls.gnutls_priority_deinit(c->priority);
  free(c);
}

/* GnuTLS's pull function: what was read ahead, else one recv (of as much as has arrived, up to
 * the size of `ahead`), without waiting while no_wait is set. Failures are reported in errno,
 * which GnuTLS reads (the session's own error field is shared with the sending thread). */
static ssize_t session_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
  CNBDTLS_session *s = ptr;
  size_t have = s->ahead_end - s->ahead_start;
  if (have == 0) {
    if (s->held_pull_result >= 0) {
      errno = EAGAIN;
      return -1;
    }
    int flags = s->no_wait ? MSG_DONTWAIT : 0;
    void *into = len >= sizeof s->ahead / 2 ? data : s->ahead;
    ssize_t r = recv(s->read_fd, into, into == data ? len : sizeof s->ahead, flags);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      s->held_pull_result = r == 0 ? 0 : errno;
      errno = EAGAIN;
      return -1;
    }
    if (r < 0 && errno != EINTR)
      s->pull_found_nothing = 1;
    if (into == data || r < 0)
      return r;
    s->ahead_start = 0;
    s->ahead_end = (size_t) r;
    have = (size_t) r;
  }
  size_t n = have < len ? have : len;
  memcpy(data, s->ahead + s->ahead_start, n);
  s->ahead_start += n;
  return (ssize_t) n;
}

/* GnuTLS's wait for input (handshake timeouts): 1 when something can be read, 0 on timeout. */
static int session_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
  CNBDTLS_session *s = ptr;
  if (s->ahead_end > s->ahead_start || s->held_pull_result >= 0)
    return 1;
  struct pollfd p = { .fd = s->read_fd, .events = POLLIN };
  return poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int) ms);
}

/* Keeps the bytes of iov after the first `skip` in s->unsent; -1 without memory. */
static int keep(CNBDTLS_session *s, const giovec_t *iov, int iovcnt, size_t skip)
{
  for (int i = 0; i < iovcnt; i++) {
    size_t length = iov[i].iov_len;
    if (skip >= length) {
      skip -= length;
      continue;
    }
    length -= skip;
    if (s->unsent_length + length > s->unsent_capacity) {
      size_t capacity = 2 * (s->unsent_length + length);
      char *grown = realloc(s->unsent, capacity);
      if (grown == NULL)
        return -1;
      s->unsent = grown;
      s->unsent_capacity = capacity;
    }
    memcpy(s->unsent + s->unsent_length, (const char *) iov[i].iov_base + skip, length);
    s->unsent_length += length;
    skip = 0;
  }
  return 0;
}

/* GnuTLS's push function: a blocking sendmsg, except while keep_unsent is set (see there). */
static ssize_t session_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int iovcnt)
{
  CNBDTLS_session *s = ptr;
  struct msghdr m = { .msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) iovcnt };
  if (s->broken) {
    errno = EPIPE;
    return -1;
  }
  /* (Only a sender under the lock touches `unsent`, which another sender may be writing out.) */
  if (!s->keep_unsent)
    return sendmsg(s->write_fd, &m, MSG_NOSIGNAL);
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;
  ssize_t sent = 0;
  if (s->unsent_length == 0) {
    sent = sendmsg(s->write_fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return -1;
    if (sent < 0)
      sent = 0;
  }
  if (keep(s, iov, iovcnt, (size_t) sent) < 0) {
    errno = ENOMEM;
    return -1;
  }
  return (ssize_t) total;
}

/* Writes out what the push function kept, waiting for the socket for at most timeout_ms in all
 * (-1: as long as it takes). 0, or GNUTLS_E_PUSH_ERROR (errno set), or GNUTLS_E_AGAIN on
 * time-out; after either, the session sends nothing more (`broken`). */
static int send_unsent(CNBDTLS_session *s, int timeout_ms)
{
  size_t done = 0;
  int r = 0;
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (done < s->unsent_length) {
    int wait = -1;
    if (timeout_ms >= 0) {
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      long spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
      wait = spent >= timeout_ms ? 0 : timeout_ms - (int) spent;
    }
    struct pollfd p = { .fd = s->write_fd, .events = POLLOUT };
    int ready = poll(&p, 1, wait);
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready <= 0) {
      r = ready == 0 ? GNUTLS_E_AGAIN : GNUTLS_E_PUSH_ERROR;
      break;
    }
    ssize_t n = send(s->write_fd, s->unsent + done, s->unsent_length - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += (size_t) n;
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      r = GNUTLS_E_PUSH_ERROR;
      break;
    }
  }
  if (r < 0)
    s->broken = 1;
  s->unsent_length = 0;
  return r;
}

CNBDTLS_session *CNBDTLS_session_new(CNBDTLS_credentials *c, int read_fd, int write_fd, int verify_peer,
                                     int *code)
{
  CNBDTLS_session *s = calloc(1, sizeof *s);
  int r;

  if (s == NULL) { *code = GNUTLS_E_MEMORY_ERROR; return NULL; }
  if ((r = tls.gnutls_init(&s->session, GNUTLS_SERVER)) < 0) { free(s); *code = r; return NULL; }
  r = tls.gnutls_priority_set(s->session, c->priority);
  if (r >= 0 && c->is_psk) {
    r = tls.gnutls_credentials_set(s->session, GNUTLS_CRD_PSK, c->psk);
  } else if (r >= 0) {
    r = tls.gnutls_credentials_set(s->session, GNUTLS_CRD_CERTIFICATE, c->x509);
    if (r >= 0 && verify_peer) {
      tls.gnutls_certificate_server_set_request(s->session, GNUTLS_CERT_REQUIRE);
      tls.gnutls_session_set_verify_cert(s->session, NULL, 0);
    }
  }
  if (r < 0) {
    tls.gnutls_deinit(s->session);
    free(s);
    *code = r;
    return NULL;
  }
  /* Sends go to write_fd through session_push; receives through session_pull. */
  tls.gnutls_transport_set_int2(s->session, read_fd, write_fd);
  tls.gnutls_transport_set_ptr2(s->session, s, s);
  tls.gnutls_transport_set_pull_function(s->session, session_pull);
  tls.gnutls_transport_set_vec_push_function(s->session, session_push);
  tls.gnutls_transport_set_pull_timeout_function(s->session, session_pull_timeout);
  s->read_fd = read_fd;
  s->write_fd = write_fd;
  s->held_pull_result = -1;
  pthread_mutex_init(&s->lock, NULL);
  tls.gnutls_handshake_set_timeout(s->session, GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT);
  return s;
}

int CNBDTLS_handshake(CNBDTLS_session *s)
{
  int r;
  do {
    r = tls.gnutls_handshake(s->session);
    if (r == GNUTLS_E_AGAIN && s->held_pull_result >= 0)
      return s->held_pull_result == 0 ? GNUTLS_E_PREMATURE_TERMINATION : GNUTLS_E_PULL_ERROR;
  } while (r < 0 && !tls.gnutls_error_is_fatal(r));
  return r < 0 ? r : 0;
}

/* What CNBDTLS_recv returns for a held end of file (0) or socket error. */
static ssize_t held_result(CNBDTLS_session *s)
{
  return s->held_pull_result == 0 ? 0 : GNUTLS_E_PULL_ERROR;
}

/* One receive under the lock, never waiting: GNUTLS_E_AGAIN when no whole record is there yet
 * (a part of one stays with GnuTLS). */
static ssize_t recv_locked(CNBDTLS_session *s, void *buf, size_t len)
{
  ssize_t r;
  /* A held end of file or error with nothing left before it is returned here rather than given
   * to GnuTLS. (A record it cut short is dropped.) */
  if (s->held_pull_result >= 0 && tls.gnutls_record_check_pending(s->session) == 0)
    return held_result(s);
  do {
    r = tls.gnutls_record_recv(s->session, buf, len);
  } while (r == GNUTLS_E_INTERRUPTED);
  if (r == GNUTLS_E_AGAIN && s->held_pull_result >= 0)
    return held_result(s);
  if (r <= 0)
    return r;
  /* Then whatever further records have arrived whole. */
  size_t total = (size_t) r;
  while (total < len) {
    r = tls.gnutls_record_recv(s->session, (char *) buf + total, len - total);
    if (r > 0) {
      total += (size_t) r;
    } else {
      if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) {
        s->has_deferred = 1;
        s->deferred = r;
      }
      break;
    }
  }
  return (ssize_t) total;
}

ssize_t CNBDTLS_recv(CNBDTLS_session *s, void *buf, size_t len)
{
  if (s->has_deferred) {
    s->has_deferred = 0;
    return s->deferred;
  }
  for (;;) {
    pthread_mutex_lock(&s->lock);
    s->no_wait = 1;
    s->pull_found_nothing = 0;
    ssize_t r = recv_locked(s, buf, len);
    int found_nothing = s->pull_found_nothing;
    s->no_wait = 0;
    pthread_mutex_unlock(&s->lock);
    if (r != GNUTLS_E_AGAIN)
      return r;
    if (!found_nothing)
      continue;
    /* No whole record yet: wait for more without the lock, so replies go out meanwhile. */
    struct pollfd p = { .fd = s->read_fd, .events = POLLIN };
    if (poll(&p, 1, -1) < 0 && errno != EINTR)
      return GNUTLS_E_PULL_ERROR;
  }
}

int CNBDTLS_unreported_error(CNBDTLS_session *s)
{
  return s->has_deferred && s->deferred < 0 ? (int) s->deferred : 0;
}

/* One record (at most len bytes of buf) under the lock, which the caller holds, with
 * keep_unsent set: never waits for the socket. */
static ssize_t send_locked(CNBDTLS_session *s, const void *buf, size_t len)
{
  ssize_t r;
  do {
    r = tls.gnutls_record_send(s->session, buf, len);
  } while (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN);
  return r;
}

ssize_t CNBDTLS_send(CNBDTLS_session *s, const void *buf, size_t len)
{
  pthread_mutex_lock(&s->lock);
  s->keep_unsent = 1;
  ssize_t r = send_locked(s, buf, len);
  s->keep_unsent = 0;
  pthread_mutex_unlock(&s->lock);
  int w = send_unsent(s, -1);
  return w < 0 ? w : r;
}

/* Sends all of buf, retrying partial and interrupted sends; takes the lock for each record
 * unless the caller holds it (locked). */
static int send_all(CNBDTLS_session *s, const char *buf, size_t len, int locked)
{
  while (len > 0) {
    ssize_t r = locked ? send_locked(s, buf, len) : CNBDTLS_send(s, buf, len);
    if (r < 0)
      return (int) r;
    buf += r;
    len -= (size_t) r;
  }
  return 0;
}

int CNBDTLS_send_message(CNBDTLS_session *s, const void *header, size_t header_len,
                         const void *payload, size_t payload_len)
{
  int r;
  int cork = payload_len > 0 && payload_len <= 16384;
  if (!cork) {
    if ((r = send_all(s, header, header_len, 0)) < 0)
      return r;
    return send_all(s, payload, payload_len, 0);
  }
  /* One record, built under one hold of the lock. */
  pthread_mutex_lock(&s->lock);
  s->keep_unsent = 1;
  tls.gnutls_record_cork(s->session);
  if ((r = send_all(s, header, header_len, 1)) < 0 ||
      (r = send_all(s, payload, payload_len, 1)) < 0) {
    tls.gnutls_record_uncork(s->session, 0);
  } else {
    do {
      r = tls.gnutls_record_uncork(s->session, GNUTLS_RECORD_WAIT);
    } while (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN);
  }
  s->keep_unsent = 0;
  pthread_mutex_unlock(&s->lock);
  int w = send_unsent(s, -1);
  if (r < 0)
    return r;
  return w < 0 ? w : 0;
}

void CNBDTLS_session_free(CNBDTLS_session *s, int send_bye)
{
  if (s == NULL) return;
  /* close_notify, waiting at most a second for room: a client that reads nothing more must not
   * hold the connection (and its thread) open. */
  if (send_bye) {
    s->keep_unsent = 1;
    tls.gnutls_bye(s->session, GNUTLS_SHUT_WR);
    s->keep_unsent = 0;
    send_unsent(s, 1000);
  }
  tls.gnutls_deinit(s->session);
  pthread_mutex_destroy(&s->lock);
  free(s->unsent);
  free(s);
}

const char *CNBDTLS_session_description(CNBDTLS_session *s)
{
  char *d = tls.gnutls_session_get_desc(s->session);
  snprintf(s->description, sizeof s->description, "%s", d ? d : "unknown");
  tls.gnutls_free(d);
  return s->description;
}
