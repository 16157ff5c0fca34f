#ifndef CNBDTLS_H
#define CNBDTLS_H

#include <stddef.h>
#include <sys/types.h>

/* A thin layer over GnuTLS for the server side of NBD's STARTTLS. Swift sees only
 * opaque pointers and plain integers; every GnuTLS error comes back as a negative
 * GnuTLS error code, readable with CNBDTLS_strerror. */

typedef struct CNBDTLS_credentials CNBDTLS_credentials;
typedef struct CNBDTLS_session CNBDTLS_session;

/* Loads libgnutls.so.30 (once, on first call); NULL when loaded, else why it could not be. */
const char *CNBDTLS_load_error(void);

/* Loads and initialises GnuTLS; returns 0 or a GnuTLS error code. Call before anything else. */
int CNBDTLS_global_init(void);

/* The message for a GnuTLS error code. */
const char *CNBDTLS_strerror(int code);

/* 1 when the processor has instructions for AES and GHASH (x86 AES-NI and PCLMULQDQ, ARMv8
 * AES and PMULL), so that AES-GCM runs far faster than ChaCha20-Poly1305. */
int CNBDTLS_cpu_accelerates_aes_gcm(void);

/* X.509 credentials from DIR/ca-cert.pem, DIR/server-cert.pem, DIR/server-key.pem and the
 * optional DIR/ca-crl.pem, with the GnuTLS priority string every session will use. On failure
 * returns NULL, sets *code and writes the name of the file (or priority) at fault into
 * failed_file. */
CNBDTLS_credentials *CNBDTLS_credentials_x509(const char *dir, const char *priority, int *code,
                                              char *failed_file, size_t failed_file_len);

/* PSK credentials from a psktool file (username:hexkey lines), with the priority string. */
CNBDTLS_credentials *CNBDTLS_credentials_psk(const char *file, const char *priority, int *code);

void CNBDTLS_credentials_free(CNBDTLS_credentials *creds);

/* A server session receiving on the connected socket read_fd and sending on write_fd (the
 * same socket, or two descriptors of one under -s). With verify_peer the client must present
 * a certificate signed by the CA (X.509 only). */
CNBDTLS_session *CNBDTLS_session_new(CNBDTLS_credentials *creds, int read_fd, int write_fd, int verify_peer,
                                     int *code);

/* Runs the handshake to completion; returns 0 or a GnuTLS error code. */
int CNBDTLS_handshake(CNBDTLS_session *s);

/* Record I/O: bytes moved, 0 at end of file, or a negative GnuTLS error code.
 * Interrupted and would-block results are retried inside. CNBDTLS_recv waits for one record,
 * then adds the records that have already arrived whole, as far as len allows; an error or end
 * of file met among those is returned by the next call. One thread may receive while another
 * sends: each call holds the session's lock only while it works on records, never while it
 * waits for the socket, so neither a reply nor a receive waits for the other. */
ssize_t CNBDTLS_recv(CNBDTLS_session *s, void *buf, size_t len);
/* The error (a negative GnuTLS code) CNBDTLS_recv met among further records and has not
 * returned yet, or 0. A fatal one ends the session at once, so the connection may end (its
 * replies can't be sent) before a receive reports it. Call it from the receiving thread. */
int CNBDTLS_unreported_error(CNBDTLS_session *s);
ssize_t CNBDTLS_send(CNBDTLS_session *s, const void *buf, size_t len);

/* Sends header then payload whole. A payload of up to one record (16 KiB) goes out corked, in
 * the same record as its header and in one write to the socket. 0, or a negative GnuTLS error. */
int CNBDTLS_send_message(CNBDTLS_session *s, const void *header, size_t header_len,
                         const void *payload, size_t payload_len);

/* Sends close_notify (best effort, waiting at most a second for room in the socket) and frees
 * the session; the fd is not closed. */
void CNBDTLS_session_free(CNBDTLS_session *s, int send_bye);

/* A one-line description of the negotiated protocol and cipher, for debug logs. */
const char *CNBDTLS_session_description(CNBDTLS_session *s);

#endif
