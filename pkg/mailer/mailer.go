// Package mailer sends plain-text notification e-mails over SMTP: one
// attempt per call, with STARTTLS whenever the server offers it, and the
// outcome classified as the SMTP reply codes say (4xx: try again later;
// 5xx: refused).
package mailer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"strings"
	"time"
)

// Config is the SMTP server and the sender.
type Config struct {
	// Addr is the server, host:port (587 for submission with STARTTLS,
	// 25 for a relay).
	Addr string
	// From is the envelope and header sender.
	From string
	// Username and Password authenticate (PLAIN) when Username is set;
	// net/smtp sends them only over TLS or to localhost.
	Username, Password string
	// Timeout bounds one message, connection to QUIT. Default 30 s.
	Timeout time.Duration
	// TLS configures STARTTLS; nil: the system roots, verifying the host
	// of Addr.
	TLS *tls.Config
}

// Check tells what is wrong with the configuration, if anything.
func (c Config) Check() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("smtp addr %q: want host:port", c.Addr)
	}
	if _, err := mail.ParseAddress(c.From); err != nil {
		return fmt.Errorf("smtp from %q: %w", c.From, err)
	}
	return nil
}

// Message is one e-mail.
type Message struct {
	To      []string
	Subject string
	Body    string
	// Headers are extra header fields, e.g. the delivery ID.
	Headers map[string]string
}

// Error is a failed attempt; Permanent when the server refused the
// message (5xx), so that sending it again cannot help.
type Error struct {
	Permanent bool
	Err       error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err is a refusal.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// Send makes one attempt at delivering m to the server.
func Send(ctx context.Context, cfg Config, m Message) error {
	if err := cfg.Check(); err != nil {
		return &Error{Permanent: true, Err: err}
	}
	if len(m.To) == 0 {
		return &Error{Permanent: true, Err: errors.New("no recipient")}
	}
	for _, to := range m.To {
		if _, err := mail.ParseAddress(to); err != nil {
			return &Error{Permanent: true, Err: fmt.Errorf("recipient %q: %w", to, err)}
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return &Error{Err: fmt.Errorf("connect to %s: %w", cfg.Addr, err)}
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline) // a deadline on a fresh connection cannot fail
	// Closing the connection is what interrupts a blocked exchange when
	// ctx ends before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	host, _, _ := net.SplitHostPort(cfg.Addr)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return classify("greeting", err)
	}
	defer c.Close()
	if err := exchange(c, cfg, host, m); err != nil {
		return err
	}
	return nil
}

func exchange(c *smtp.Client, cfg Config, host string, m Message) error {
	if err := c.Hello("pacsflow"); err != nil {
		return classify("EHLO", err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		tc := cfg.TLS
		if tc == nil {
			tc = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		}
		if err := c.StartTLS(tc); err != nil {
			return classify("STARTTLS", err)
		}
	}
	if cfg.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", cfg.Username, cfg.Password, host)); err != nil {
			return classify("AUTH", err)
		}
	}
	from, _ := mail.ParseAddress(cfg.From) // checked by Check
	if err := c.Mail(from.Address); err != nil {
		return classify("MAIL FROM", err)
	}
	for _, to := range m.To {
		a, _ := mail.ParseAddress(to) // checked by Send
		if err := c.Rcpt(a.Address); err != nil {
			return classify("RCPT TO "+a.Address, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return classify("DATA", err)
	}
	if _, err := w.Write(compose(cfg.From, m)); err != nil {
		return classify("message", err)
	}
	if err := w.Close(); err != nil {
		return classify("end of message", err)
	}
	if err := c.Quit(); err != nil {
		// The server took the message (its reply to the data was 250); a
		// failed goodbye does not undo that.
		return nil
	}
	return nil
}

// classify wraps an error of an SMTP step: a 5xx reply is permanent,
// anything else (4xx, a network error) may pass on a later attempt.
func classify(step string, err error) error {
	var te *textproto.Error
	permanent := errors.As(err, &te) && te.Code >= 500
	return &Error{Permanent: permanent, Err: fmt.Errorf("smtp %s: %w", step, err)}
}

// compose writes the message: the header (values cleaned of line breaks,
// so that no value can add a field), then the body with CRLF line ends.
func compose(from string, m Message) []byte {
	var b strings.Builder
	field := func(k, v string) {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
		b.WriteString(k + ": " + v + "\r\n")
	}
	field("From", from)
	field("To", strings.Join(m.To, ", "))
	field("Subject", mimeWord(m.Subject))
	field("Date", time.Now().Format(time.RFC1123Z))
	field("Message-ID", "<"+messageID()+"@pacsflow>")
	field("MIME-Version", "1.0")
	field("Content-Type", "text/plain; charset=utf-8")
	field("Content-Transfer-Encoding", "8bit")
	for k, v := range m.Headers {
		field(k, v)
	}
	b.WriteString("\r\n")
	body := strings.ReplaceAll(strings.ReplaceAll(m.Body, "\r\n", "\n"), "\n", "\r\n")
	b.WriteString(body)
	if !strings.HasSuffix(body, "\r\n") {
		b.WriteString("\r\n")
	}
	return []byte(b.String())
}

// mimeWord encodes a subject that is not plain ASCII as an RFC 2047
// encoded word ("Q" encoding).
func mimeWord(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		ascii = ascii && s[i] < 127
	}
	if ascii {
		return s
	}
	var b strings.Builder
	b.WriteString("=?utf-8?q?")
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
			b.WriteByte('_')
		case c > 32 && c < 127 && c != '=' && c != '?' && c != '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	b.WriteString("?=")
	return b.String()
}

func messageID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on supported platforms
	return hex.EncodeToString(b[:])
}
