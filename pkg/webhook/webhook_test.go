package webhook

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var (
	secret    = []byte("whsec_test")
	oldSecret = []byte("whsec_old")
	signedAt  = time.Unix(1700000000, 0)
	body      = []byte(`{"study":"2.25.1","level":"STAT"}`)
)

const tolerance = 5 * time.Minute

// knownSignature was computed outside Go:
//
//	printf '1700000000.{"study":"2.25.1","level":"STAT"}' | openssl dgst -sha256 -hmac whsec_test
const knownSignature = "t=1700000000,v1=33d775e205e3d8f92bbb3fc8bf0c1ed18fb2d924dd2ca872e4955b62181255b1"

func TestSignKnownAnswer(t *testing.T) {
	if got := Sign(secret, signedAt, body); got != knownSignature {
		t.Errorf("Sign = %s\nwant   %s", got, knownSignature)
	}
	// Only whole seconds are signed: the header cannot carry more.
	if got := Sign(secret, signedAt.Add(999*time.Millisecond), body); got != knownSignature {
		t.Errorf("Sign with sub-second time = %s\nwant   %s", got, knownSignature)
	}
}

// v1Of returns the v1 value of a header made by Sign.
func v1Of(header string) string {
	_, v1, _ := strings.Cut(header, ",v1=")
	return v1
}

func TestVerify(t *testing.T) {
	signed := Sign(secret, signedAt, body)
	tests := []struct {
		name    string
		header  string
		body    []byte
		now     time.Time
		secrets [][]byte
		want    error // nil: verifies
		msg     string
	}{
		{name: "round trip", header: signed, body: body, now: signedAt, secrets: [][]byte{secret}},
		{name: "known answer", header: knownSignature, body: body, now: signedAt, secrets: [][]byte{secret}},
		{name: "receiver clock ahead, within tolerance", header: signed, body: body, now: signedAt.Add(4 * time.Minute), secrets: [][]byte{secret}},
		{name: "receiver clock behind, within tolerance", header: signed, body: body, now: signedAt.Add(-4 * time.Minute), secrets: [][]byte{secret}},
		{name: "exactly at the tolerance", header: signed, body: body, now: signedAt.Add(tolerance), secrets: [][]byte{secret}},
		{name: "rotation: second secret matches", header: signed, body: body, now: signedAt, secrets: [][]byte{oldSecret, secret}},
		{name: "rotation: empty previous secret is skipped", header: signed, body: body, now: signedAt, secrets: [][]byte{{}, secret}},
		{name: "rotation: sender signs with old and new", body: body, now: signedAt, secrets: [][]byte{secret},
			header: Sign(oldSecret, signedAt, body) + ",v1=" + v1Of(signed)},
		{name: "unknown schemes are ignored", body: body, now: signedAt, secrets: [][]byte{secret},
			header: signed + ",v0=whatever,v2=" + strings.Repeat("ab", 40)},
		{name: "spaces after commas", body: body, now: signedAt, secrets: [][]byte{secret},
			header: "t=1700000000, v1=" + v1Of(signed)},
		{name: "tampered body", header: signed, body: []byte(`{"study":"2.25.1","level":"ROUTINE"}`), now: signedAt,
			secrets: [][]byte{secret}, want: ErrMismatch},
		{name: "empty body instead", header: signed, body: nil, now: signedAt, secrets: [][]byte{secret}, want: ErrMismatch},
		{name: "wrong secret", header: signed, body: body, now: signedAt, secrets: [][]byte{oldSecret}, want: ErrMismatch},
		{name: "timestamp changed", header: "t=1700000001,v1=" + v1Of(signed), body: body, now: signedAt,
			secrets: [][]byte{secret}, want: ErrMismatch},
		{name: "too old", header: signed, body: body, now: signedAt.Add(tolerance + time.Second), secrets: [][]byte{secret},
			want: ErrTimestamp, msg: "signed 5m1s ago, tolerance 5m0s"},
		{name: "replayed a day later", header: signed, body: body, now: signedAt.Add(24 * time.Hour), secrets: [][]byte{secret},
			want: ErrTimestamp, msg: "signed 24h0m0s ago"},
		{name: "in the future", header: signed, body: body, now: signedAt.Add(-6 * time.Minute), secrets: [][]byte{secret},
			want: ErrTimestamp, msg: "signed 6m0s in the future"},
		{name: "absurdly far in the future", header: Sign(secret, time.Unix(math.MaxInt64/2, 0), body), body: body, now: signedAt,
			secrets: [][]byte{secret}, want: ErrTimestamp, msg: "signed 2562047h47m16.854775807s in the future"},
		{name: "absurdly old", header: Sign(secret, time.Unix(math.MinInt64/2, 0), body), body: body, now: signedAt,
			secrets: [][]byte{secret}, want: ErrTimestamp, msg: "signed 2562047h47m16.854775807s ago"},
		{name: "forged and stale is a mismatch", header: signed, body: []byte("{}"), now: signedAt.Add(time.Hour),
			secrets: [][]byte{secret}, want: ErrMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.header, tt.body, tt.now, tolerance, tt.secrets...)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("Verify: %v", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			case tt.want != nil && !strings.Contains(err.Error(), tt.msg):
				t.Errorf("Verify = %q, want it to say %q", err, tt.msg)
			}
		})
	}
}

var sig64 = strings.Repeat("0123456789abcdef", 4)

// malformed lists bad headers with the error each must give; FuzzVerify starts from them too.
var malformed = []struct {
	name   string
	header string
	want   error
	msg    string
}{
	{"empty", "", ErrNoSignature, "no Pacsflow-Signature header"},
	{"blank", "  ", ErrNoSignature, "no Pacsflow-Signature header"},
	{"t not a number", "t=abc,v1=" + sig64, ErrMalformed, `t="abc" is not a time in Unix seconds`},
	{"t overflows", "t=99999999999999999999,v1=" + sig64, ErrMalformed, "is not a time in Unix seconds"},
	{"long t is cut short", "t=" + strings.Repeat("9x", 100) + ",v1=" + sig64, ErrMalformed, `t="` + strings.Repeat("9x", 20) + `"… is not`},
	{"t twice", "t=1,t=2,v1=" + sig64, ErrMalformed, "more than one t="},
	{"no t", "v1=" + sig64, ErrMalformed, "no t= timestamp"},
	{"no v1", "t=1700000000", ErrMalformed, "no v1= signature"},
	{"only other schemes", "t=1700000000,v2=" + sig64, ErrMalformed, "no v1= signature"},
	{"v1 short", "t=1700000000,v1=abc", ErrMalformed, "v1 has 3 characters, want 64 hex digits"},
	{"v1 odd hex", "t=1700000000,v1=" + sig64[1:], ErrMalformed, "v1 has 63 characters, want 64 hex digits"},
	{"v1 empty", "t=1700000000,v1=", ErrMalformed, "v1 has 0 characters"},
	{"v1 not hex", "t=1700000000,v1=zz" + sig64[2:], ErrMalformed, "v1 is not hex: encoding/hex: invalid byte: U+007A 'z'"},
	{"not key=value", "garbage", ErrMalformed, `element "garbage" is not key=value`},
	{"empty element", "t=1700000000,,v1=" + sig64, ErrMalformed, `element "" is not key=value`},
	{"semicolons", "t=1700000000;v1=" + sig64, ErrMalformed, "is not a time in Unix seconds"},
}

func TestVerifyMalformed(t *testing.T) {
	for _, tt := range malformed {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.header, body, signedAt, tolerance, secret)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify(%q) = %v, want %v", tt.header, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Verify(%q) = %q, want it to say %q", tt.header, err, tt.msg)
			}
		})
	}
}

func TestVerifyBoundsWhatItEchoes(t *testing.T) {
	err := Verify("t="+strings.Repeat("9x", 50000)+",v1="+sig64, body, signedAt, tolerance, secret)
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Verify = %v, want ErrMalformed", err)
	}
	if len(err.Error()) > 200 {
		t.Errorf("error is %d bytes long: a header from the network must not flood the logs", len(err.Error()))
	}
}

func TestVerifyNeedsASecret(t *testing.T) {
	for _, secrets := range [][][]byte{nil, {{}}, {nil, {}}} {
		err := Verify(knownSignature, body, signedAt, tolerance, secrets...)
		if err == nil || !strings.Contains(err.Error(), "needs a non-empty secret") {
			t.Errorf("Verify with secrets %q = %v, want an error asking for a secret", secrets, err)
		}
	}
}

// received is what a test server saw of one request.
type received struct {
	method, path string
	header       http.Header
	body         []byte
}

// recorder starts a server that sends every request it gets on the returned channel and
// answers with status and response.
func recorder(t *testing.T, status int, response string) (*httptest.Server, <-chan received) {
	t.Helper()
	got := make(chan received, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server reading the body: %v", err)
		}
		got <- received{r.Method, r.URL.Path, r.Header.Clone(), b}
		w.WriteHeader(status)
		io.WriteString(w, response)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func request(url string) Request {
	return Request{URL: url, Secret: secret, DeliveryID: "dlv-1", Event: "study.triaged", Body: body}
}

func TestDeliverSendsSignedRequest(t *testing.T) {
	srv, got := recorder(t, http.StatusOK, "ok")
	var c Client
	res := c.Deliver(context.Background(), request(srv.URL+"/hooks/pacs"))
	if res.Err != nil || res.Status != http.StatusOK || res.Retryable || res.Duration <= 0 {
		t.Fatalf("Deliver = %+v, want 200 with no error, not retryable, with a duration", res)
	}
	r := <-got
	if r.method != http.MethodPost || r.path != "/hooks/pacs" || string(r.body) != string(body) {
		t.Errorf("server got %s %s %q, want POST /hooks/pacs %q", r.method, r.path, r.body, body)
	}
	for name, want := range map[string]string{
		"Content-Type": "application/json",
		"User-Agent":   "pacsflow-webhook/1",
		HeaderDelivery: "dlv-1",
		HeaderEvent:    "study.triaged",
	} {
		if v := r.header.Get(name); v != want {
			t.Errorf("header %s = %q, want %q", name, v, want)
		}
	}
	// The receiver's side, with its own clock.
	if err := Verify(r.header.Get(HeaderSignature), r.body, time.Now(), tolerance, oldSecret, secret); err != nil {
		t.Errorf("receiver's Verify: %v", err)
	}

	c = Client{UserAgent: "pacsflow-test", Now: func() time.Time { return signedAt }}
	if res := c.Deliver(context.Background(), request(srv.URL)); res.Err != nil {
		t.Fatal(res.Err)
	}
	r = <-got
	if sig := r.header.Get(HeaderSignature); sig != knownSignature {
		t.Errorf("signature signed at Now() = %s, want %s", sig, knownSignature)
	}
	if ua := r.header.Get("User-Agent"); ua != "pacsflow-test" {
		t.Errorf("User-Agent = %q, want pacsflow-test", ua)
	}
}

func TestDeliverStatus(t *testing.T) {
	long := strings.Repeat("x", 2000)
	tests := []struct {
		status    int
		response  string
		retryable bool
		msg       []string // the error says all of these; none: no error
	}{
		{200, "ok", false, nil},
		{202, "", false, nil},
		{204, "", false, nil},
		{408, "", true, []string{"408 Request Timeout"}},
		{425, "", true, []string{"425 Too Early"}},
		{429, "slow down", true, []string{"429 Too Many Requests", `"slow down"`}},
		{500, "boom\n", true, []string{"500 Internal Server Error", `"boom"`}},
		{502, "", true, []string{"502 Bad Gateway"}},
		{503, "", true, []string{"503 Service Unavailable"}},
		{400, `{"error":"unknown study"}`, false, []string{"refused, not retrying", "400 Bad Request", `unknown study`}},
		{401, "bad signature", false, []string{"401 Unauthorized", "bad signature"}},
		{404, "", false, []string{"refused, not retrying", "404 Not Found"}},
		{410, "endpoint deleted", false, []string{"410 Gone", `"endpoint deleted"`}},
		{413, long, false, []string{"413 Request Entity Too Large", `"` + long[:512] + `" (truncated)`}},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			srv, _ := recorder(t, tt.status, tt.response)
			var c Client
			res := c.Deliver(context.Background(), request(srv.URL))
			if res.Status != tt.status || res.Retryable != tt.retryable {
				t.Errorf("Deliver = %+v, want status %d, retryable %v", res, tt.status, tt.retryable)
			}
			if tt.msg == nil {
				if res.Err != nil {
					t.Errorf("Deliver error: %v", res.Err)
				}
				return
			}
			if res.Err == nil {
				t.Fatal("Deliver: no error")
			}
			for _, m := range tt.msg {
				if !strings.Contains(res.Err.Error(), m) {
					t.Errorf("Deliver error %q does not say %q", res.Err, m)
				}
			}
			if strings.Contains(res.Err.Error(), long[:513]) {
				t.Error("Deliver error holds more than 512 bytes of the response")
			}
		})
	}
}

func TestDeliverDoesNotFollowRedirects(t *testing.T) {
	var followed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusPermanentRedirect)
	})
	mux.HandleFunc("/elsewhere", func(http.ResponseWriter, *http.Request) { followed.Add(1) })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	var c Client
	res := c.Deliver(context.Background(), request(srv.URL+"/old"))
	if res.Status != http.StatusPermanentRedirect || res.Retryable || res.Err == nil ||
		!strings.Contains(res.Err.Error(), `to "/elsewhere" (redirects are not followed)`) {
		t.Errorf("Deliver = %+v, want a 308 refusal naming the new location", res)
	}
	if n := followed.Load(); n != 0 {
		t.Errorf("the redirect was followed %d times", n)
	}
}

// blocking starts a server whose handler waits until its client goes away, telling arrived
// when a request comes in.
func blocking(t *testing.T) (srv *httptest.Server, arrived <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{}, 16)
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The server notices a client gone only once the request body has been read.
		io.Copy(io.Discard, r.Body)
		ch <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	return srv, ch
}

func TestDeliverTimeout(t *testing.T) {
	srv, _ := blocking(t)
	c := Client{Timeout: 50 * time.Millisecond}
	res := c.Deliver(context.Background(), request(srv.URL))
	if !res.Retryable || res.Status != 0 || !errors.Is(res.Err, context.DeadlineExceeded) ||
		!strings.Contains(res.Err.Error(), "no response within 50ms") {
		t.Errorf("Deliver = %+v, want a retryable timeout", res)
	}
	if res.Duration < 50*time.Millisecond || res.Duration > 5*time.Second {
		t.Errorf("Duration = %v, want about the 50ms timeout", res.Duration)
	}
}

func TestDeliverCanceled(t *testing.T) {
	srv, arrived := blocking(t)
	var c Client

	t.Run("before sending", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		res := c.Deliver(ctx, request(srv.URL))
		if !errors.Is(res.Err, context.Canceled) || !res.Retryable || res.Status != 0 {
			t.Errorf("Deliver = %+v, want context.Canceled, retryable", res)
		}
		select {
		case <-arrived:
			t.Error("the server got a request")
		default:
		}
	})

	t.Run("while waiting for the answer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-arrived; cancel() }()
		done := make(chan Result)
		go func() { done <- c.Deliver(ctx, request(srv.URL)) }()
		select {
		case res := <-done:
			if !errors.Is(res.Err, context.Canceled) || !res.Retryable || strings.Contains(res.Err.Error(), "no response within") {
				t.Errorf("Deliver = %+v, want context.Canceled, retryable, not a timeout", res)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Deliver did not return after its ctx was canceled")
		}
	})
}

func TestDeliverReusesConnections(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusBadRequest)
		}
		io.WriteString(w, strings.Repeat("response ", 4<<10)) // 36 KiB: more than the excerpt, less than the drain bound
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	var c Client
	for i, path := range []string{"/", "/refuse", "/", "/refuse", "/"} {
		if res := c.Deliver(context.Background(), request(srv.URL+path)); res.Status == 0 {
			t.Fatalf("delivery %d: %v", i, res.Err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("5 sequential deliveries opened %d connections, want 1", n)
	}
}

func TestDeliverRefusesBadRequests(t *testing.T) {
	srv, got := recorder(t, http.StatusOK, "")
	tests := []struct {
		name string
		edit func(*Request)
		msg  string
	}{
		{"no secret", func(r *Request) { r.Secret = nil }, "no secret"},
		{"no delivery ID", func(r *Request) { r.DeliveryID = "" }, "Pacsflow-Delivery \"\" is empty"},
		{"newline in event", func(r *Request) { r.Event = "study\r\nX-Injected: 1" }, "Pacsflow-Event"},
		{"no URL", func(r *Request) { r.URL = "" }, "not an http or https URL"},
		{"other scheme", func(r *Request) { r.URL = "ftp://example.org/hook" }, "not an http or https URL"},
		{"no host", func(r *Request) { r.URL = "http:///hook" }, "not an http or https URL"},
		{"unparsable URL", func(r *Request) { r.URL = "http://[::1" }, "missing ']' in host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request(srv.URL)
			tt.edit(&req)
			var c Client
			res := c.Deliver(context.Background(), req)
			if res.Err == nil || res.Retryable || res.Status != 0 || !strings.Contains(res.Err.Error(), tt.msg) {
				t.Errorf("Deliver = %+v, want a non-retryable error saying %q", res, tt.msg)
			}
		})
	}
	select {
	case r := <-got:
		t.Errorf("the server got a request: %s %s", r.method, r.path)
	default:
	}
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	tests := []struct {
		n         int
		base, max time.Duration
		want      time.Duration
	}{
		{1, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{3, time.Second, time.Minute, 4 * time.Second},
		{6, time.Second, time.Minute, 32 * time.Second},
		{7, time.Second, time.Minute, time.Minute},
		{1000, time.Second, time.Minute, time.Minute},
		{0, time.Second, time.Minute, time.Second},
		{-3, time.Second, time.Minute, time.Second},
		{1, 2 * time.Minute, time.Minute, time.Minute},
		{64, 3, math.MaxInt64, math.MaxInt64},
		{63, 1, math.MaxInt64, 1 << 62},
		{1, 0, time.Minute, 0},
		{1, time.Second, 0, 0},
		{1, -time.Second, time.Minute, 0},
	}
	for _, tt := range tests {
		if got := Backoff(tt.n, tt.base, tt.max, 0); got != tt.want {
			t.Errorf("Backoff(%d, %v, %v, 0) = %v, want %v", tt.n, tt.base, tt.max, got, tt.want)
		}
	}
}

func TestBackoffJitter(t *testing.T) {
	const draws = 10000
	tests := []struct {
		name    string
		n       int
		max     time.Duration
		jitter  float64
		lo, hi  time.Duration
		spreads bool // whether the draws must cover [lo, hi] nearly end to end
	}{
		{"±20%", 3, time.Minute, 0.2, 3200 * time.Millisecond, 4800 * time.Millisecond, true},
		{"±20% of the cap", 20, time.Minute, 0.2, 48 * time.Second, 72 * time.Second, true},
		{"clamped to ±100%", 3, time.Minute, 5, 0, 8 * time.Second, true},
		{"negative is none", 3, time.Minute, -0.5, 4 * time.Second, 4 * time.Second, false},
		{"NaN is none", 3, time.Minute, math.NaN(), 4 * time.Second, 4 * time.Second, false},
		{"no overflow at the largest delay", 100, math.MaxInt64, 1, 0, math.MaxInt64, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			least, most := time.Duration(math.MaxInt64), time.Duration(-1)
			for range draws {
				d := Backoff(tt.n, time.Second, tt.max, tt.jitter)
				if d < tt.lo || d > tt.hi {
					t.Fatalf("Backoff = %v, outside [%v, %v]", d, tt.lo, tt.hi)
				}
				least, most = min(least, d), max(most, d)
			}
			// With 10000 uniform draws, missing the outer 3% at either end has a
			// probability of about 0.97^10000: never.
			if margin := (tt.hi - tt.lo) * 3 / 100; tt.spreads && (least > tt.lo+margin || most < tt.hi-margin) {
				t.Errorf("draws ranged over [%v, %v], want nearly all of [%v, %v]", least, most, tt.lo, tt.hi)
			}
		})
	}
}

// FuzzVerify feeds Verify headers as they may come from the network. Verify must not
// panic, every error must be one of its four, a header made by Sign must verify for any
// body and time, and must stop verifying when the body changes.
func FuzzVerify(f *testing.F) {
	f.Add(knownSignature, body, secret, signedAt.Unix())
	f.Add(Sign(secret, signedAt, body)+",v1="+v1Of(Sign(oldSecret, signedAt, body)), body, oldSecret, signedAt.Unix())
	for _, tt := range malformed {
		f.Add(tt.header, body, secret, signedAt.Unix())
	}
	f.Fuzz(func(t *testing.T, header string, body, secret []byte, unix int64) {
		if len(secret) == 0 {
			secret = []byte("k") // with no secret, Verify would not look at the header
		}
		now := time.Unix(unix, 0)
		if err := Verify(header, body, now, tolerance, secret); err != nil &&
			!errors.Is(err, ErrNoSignature) && !errors.Is(err, ErrMalformed) &&
			!errors.Is(err, ErrTimestamp) && !errors.Is(err, ErrMismatch) {
			t.Fatalf("Verify(%q) = %v: not one of the documented errors", header, err)
		}
		signed := Sign(secret, now, body)
		if err := Verify(signed, body, now, tolerance, secret); err != nil {
			t.Fatalf("Verify(Sign(…)) = %v for body %q at %d", err, body, unix)
		}
		tampered := append([]byte{}, body...)
		if len(tampered) == 0 {
			tampered = append(tampered, 0)
		} else {
			tampered[0] ^= 1
		}
		if err := Verify(signed, tampered, now, tolerance, secret); !errors.Is(err, ErrMismatch) {
			t.Fatalf("Verify(Sign(…)) of a changed body = %v, want ErrMismatch", err)
		}
	})
}
