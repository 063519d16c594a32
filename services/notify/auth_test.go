package notify

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Without a credential the worklist (patient names) is served on loopback
// only; with one, anywhere.
func TestAuthExposed(t *testing.T) {
	tests := []struct {
		addr    string
		exposed bool
	}{
		{"127.0.0.1:8080", false},
		{"127.1.2.3:8080", false},
		{"[::1]:8080", false},
		{"localhost:80", false},
		{"0.0.0.0:8080", true},
		{":8080", true},
		{"[::]:8080", true},
		{"10.1.2.3:80", true},
		{"worklist.example:443", true},
	}
	configured := []*Auth{{Token: "a-token"}, {Users: map[string][]byte{"u": []byte("$2a$04$x")}}}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			for _, a := range []*Auth{nil, {}} {
				err := a.Exposed(tt.addr)
				if tt.exposed != errors.Is(err, ErrExposed) || !tt.exposed && err != nil {
					t.Errorf("Auth %+v: %v, want exposed %v", a, err, tt.exposed)
				}
			}
			for _, a := range configured {
				if err := a.Exposed(tt.addr); err != nil {
					t.Errorf("with a credential: %v", err)
				}
			}
		})
	}
	if err := (*Auth)(nil).Exposed("127.0.0.1"); err == nil || errors.Is(err, ErrExposed) {
		t.Errorf("an address without a port: %v", err)
	}
}

// hash is a bcrypt hash of password, made at the lowest cost: the tests
// check the format, not the strength.
func hash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadUsers(t *testing.T) {
	h := hash(t, "correct horse")
	// htpasswd -B writes $2y$, which Go's bcrypt reads as $2a$.
	y := strings.Replace(hash(t, "battery staple"), "$2a$", "$2y$", 1)
	users, err := LoadUsers(writeFile(t, "# readers\n\ndr.house:"+h+"\r\n  night:"+y+"  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 || string(users["dr.house"]) != h || string(users["night"]) != y {
		t.Errorf("users %q", users)
	}
	a := &Auth{Users: users}
	for user, pass := range map[string]string{"dr.house": "correct horse", "night": "battery staple"} {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.SetBasicAuth(user, pass)
		if who := a.who(r); who != user {
			t.Errorf("%s: who %q", user, who)
		}
	}

	tests := []struct {
		name, content, want string
	}{
		{"plain password", "alice:secret\n", "users:1: user alice: not a bcrypt hash"},
		{"no colon", "# users\nalice " + h + "\n", "users:2: want user:bcrypt-hash"},
		{"no user", ":" + h + "\n", "users:1: want user:bcrypt-hash"},
		{"empty", "", "no users"},
		{"comments only", "# nobody yet\n\n", "no users"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			users, err := LoadUsers(writeFile(t, tt.content))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadUsers: %v (%d users), want an error with %q", err, len(users), tt.want)
			}
		})
	}
	if _, err := LoadUsers(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// With a credential configured, the page, its assets and every API route
// require it.
func TestAuthRoutes(t *testing.T) {
	const token = "a-long-random-api-token"
	auth := &Auth{Token: token, Users: map[string][]byte{"dr.house": []byte(hash(t, "correct horse"))}}
	f := newFixture(t, Config{Auth: auth})
	s := f.newStudy(1, "", time.Now().UTC())
	f.publish(s.received(1))
	f.waitEntry(s.uid, "listed", func(*Entry) bool { return true })

	basic := func(user, pass string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(user, pass) }
	}
	bearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	// In order: a right password is remembered, and a wrong one after it
	// must still fail.
	tests := []struct {
		name, path string
		cred       func(*http.Request)
		want       int
	}{
		{"worklist without credential", "/api/v1/worklist", nil, http.StatusUnauthorized},
		{"page without credential", "/", nil, http.StatusUnauthorized},
		{"asset without credential", "/ui/app.js", nil, http.StatusUnauthorized},
		{"study without credential", "/api/v1/studies/" + s.uid, nil, http.StatusUnauthorized},
		{"preview without credential", "/api/v1/studies/" + s.uid + "/preview", nil, http.StatusUnauthorized},
		{"deliveries without credential", "/api/v1/deliveries", nil, http.StatusUnauthorized},
		{"description without credential", "/api/v1/openapi.json", nil, http.StatusUnauthorized},
		{"stream without credential", "/api/v1/stream", nil, http.StatusUnauthorized},
		{"worklist as a user", "/api/v1/worklist", basic("dr.house", "correct horse"), http.StatusOK},
		{"page as a user", "/", basic("dr.house", "correct horse"), http.StatusOK},
		{"asset as a user", "/ui/app.js", basic("dr.house", "correct horse"), http.StatusOK},
		{"wrong password", "/api/v1/worklist", basic("dr.house", "correct horse "), http.StatusUnauthorized},
		{"unknown user", "/api/v1/worklist", basic("dr.who", "correct horse"), http.StatusUnauthorized},
		{"the token as a password", "/api/v1/worklist", basic("dr.house", token), http.StatusUnauthorized},
		{"token", "/api/v1/worklist", bearer(token), http.StatusOK},
		{"token for the page", "/", bearer(token), http.StatusOK},
		{"wrong token", "/api/v1/worklist", bearer(token + "x"), http.StatusUnauthorized},
		{"token prefix", "/api/v1/worklist", bearer(token[:10]), http.StatusUnauthorized},
		{"empty token", "/api/v1/worklist", bearer(""), http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, f.http.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.cred != nil {
				tt.cred(req)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("%d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want != http.StatusUnauthorized {
				return
			}
			// The browser asks for a password on this header.
			if h := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(h, "Basic realm=") {
				t.Errorf("WWW-Authenticate %q", h)
			}
			var e struct{ Error string }
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Error == "" {
				t.Errorf("body: %v %+v", err, e)
			}
		})
	}

	put := func(cred func(*http.Request), body string, want int) *Entry {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, f.http.URL+"/api/v1/studies/"+s.uid+"/status", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if cred != nil {
			cred(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("PUT %s: %d %s, want %d", body, resp.StatusCode, b, want)
		}
		var e Entry
		if want == http.StatusOK {
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
		}
		return &e
	}
	put(nil, `{"status":"in_review","by":"dr.house"}`, http.StatusUnauthorized)
	put(basic("dr.house", "wrong"), `{"status":"in_review","by":"dr.house"}`, http.StatusUnauthorized)
	// A user is who the credential says, whatever the body claims.
	if e := put(basic("dr.house", "correct horse"), `{"status":"in_review","by":"dr.cuddy"}`, http.StatusOK); e.Status != StatusInReview || e.StatusBy != "dr.house" {
		t.Errorf("status by a user: %s by %q, want in_review by dr.house", e.Status, e.StatusBy)
	}
	if e := put(basic("dr.house", "correct horse"), `{"status":"done"}`, http.StatusOK); e.Status != StatusDone || e.StatusBy != "dr.house" {
		t.Errorf("status by a user without by: %s by %q", e.Status, e.StatusBy)
	}
	// The token names no person: the body does, and must.
	if e := put(bearer(token), `{"status":"in_review","by":"ris-bridge"}`, http.StatusOK); e.Status != StatusInReview || e.StatusBy != "ris-bridge" {
		t.Errorf("status with the token: %s by %q", e.Status, e.StatusBy)
	}
	put(bearer(token), `{"status":"done"}`, http.StatusBadRequest)
	f.waitEntry(s.uid, "in review by the token's reader", func(e *Entry) bool { return e.Status == StatusInReview && e.StatusBy == "ris-bridge" })
}
