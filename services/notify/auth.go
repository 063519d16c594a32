package notify

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// Auth is the credential the worklist's page and API require: a bearer
// token (for programs), users with bcrypt password hashes (for people,
// through the browser's basic authentication), or both. A nil or empty
// Auth requires nothing, which Exposed refuses beyond loopback. Share it by
// pointer: it caches verified credentials.
type Auth struct {
	// Token is accepted as "Authorization: Bearer <token>"; who is
	// "token".
	Token string
	// Users maps user names to bcrypt hashes (htpasswd -B).
	Users map[string][]byte

	// verified remembers the credentials bcrypt accepted, by a digest, so
	// that each request does not pay bcrypt's deliberate slowness again.
	verified sync.Map
}

// Enabled reports whether a credential is configured.
func (a *Auth) Enabled() bool { return a != nil && (a.Token != "" || len(a.Users) > 0) }

// LoadUsers reads an htpasswd file of bcrypt hashes (user:$2y$...), one
// user a line; blank lines and lines starting with # are skipped.
func LoadUsers(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	defer f.Close()
	users := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("users file %s:%d: want user:bcrypt-hash", path, n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("users file %s:%d: user %s: not a bcrypt hash (make one with htpasswd -B): %w", path, n, user, err)
		}
		users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("users file %s: no users", path)
	}
	return users, nil
}

// who returns the name of the requester, or "" when the request does not
// carry a valid credential.
func (a *Auth) who(r *http.Request) string {
	if !a.Enabled() {
		return ""
	}
	h := r.Header.Get("Authorization")
	if token, ok := strings.CutPrefix(h, "Bearer "); ok && a.Token != "" {
		if subtle.ConstantTimeCompare([]byte(token), []byte(a.Token)) == 1 {
			return "token"
		}
		return ""
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return ""
	}
	hash, known := a.Users[user]
	if !known {
		return ""
	}
	digest := sha256.Sum256([]byte(user + "\x00" + pass + "\x00" + string(hash)))
	if _, ok := a.verified.Load(digest); ok {
		return user
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return ""
	}
	a.verified.Store(digest, struct{}{})
	return user
}

// require wraps h so that it answers 401 without a valid credential; with
// none configured, everything passes (Exposed keeps that to loopback).
func (a *Auth) require(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.Enabled() && a.who(r) == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="pacsflow worklist", charset="UTF-8"`)
			writeError(w, http.StatusUnauthorized, "a credential is required: basic authentication or a bearer token")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ErrExposed refuses to serve the worklist beyond loopback without a
// credential: it shows patient names.
var ErrExposed = errors.New("the worklist shows patient data: listening beyond loopback needs a credential (--auth-token or --auth-users)")

// Exposed checks that addr (host:port, as given to net.Listen) is a
// loopback address unless a credential is configured.
func (a *Auth) Exposed(addr string) error {
	if a.Enabled() {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %s: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s: %w", addr, ErrExposed)
}
