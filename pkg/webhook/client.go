package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Request describes one delivery attempt.
type Request struct {
	URL string
	// Secret is the endpoint's signing secret; it must not be empty.
	Secret []byte
	// DeliveryID must be the same on every attempt of one delivery: receivers de-duplicate on it.
	DeliveryID string
	Event      string
	// Body is sent as is, as application/json, and signed byte for byte.
	Body []byte
}

// Result is the outcome of one attempt.
type Result struct {
	// Status is the HTTP status answered; 0 when there was no response.
	Status   int
	Duration time.Duration
	// Retryable says whether another attempt may succeed. It is true for a canceled ctx
	// too: the receiver did not refuse the delivery, the caller stopped waiting for it.
	Retryable bool
	// Err is nil when the receiver answered 2xx.
	Err error
}

// Client posts deliveries. Its zero value is ready to use; it is safe for concurrent use
// as long as its fields are not changed meanwhile.
type Client struct {
	// HTTP sends the requests. Nil means a client that does not follow redirects: a
	// redirect would send a signed delivery to wherever the receiver points, so it is
	// reported as a refusal whose error names the new location instead.
	HTTP *http.Client
	// Timeout bounds each attempt, response body included; 0 means 10 s.
	Timeout time.Duration
	// UserAgent is sent as User-Agent; empty means "pacsflow-webhook/1".
	UserAgent string
	// Now gives the signing time; nil means time.Now. Durations use the monotonic clock.
	Now func() time.Time
}

const (
	defaultTimeout   = 10 * time.Second
	defaultUserAgent = "pacsflow-webhook/1"
	// The excerpt goes into the error, and so into logs and dead letters: enough to see
	// the receiver's reason, not its whole error page.
	excerptBytes = 512
	// Reading the rest of a response lets its connection be reused; past this much it is
	// cheaper to drop the connection than to read on.
	drainBytes = 64 << 10
)

var noRedirects = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// Deliver makes one attempt: it POSTs req.Body with the Content-Type, User-Agent, Event,
// Delivery and Signature headers, signed at c.Now().
//
// A 2xx answer is a success. 408, 425, 429, 5xx, network errors and the attempt's timeout
// are retryable; any other answer is not (the receiver refuses this payload, sending it
// again cannot help), nor is a Request that cannot be sent. Non-2xx errors carry the status
// and up to 512 bytes of the response body. ctx bounds the attempt along with c.Timeout.
// Deliver does not retry: the caller decides when, with [Backoff], and keeps the DeliveryID.
func (c *Client) Deliver(ctx context.Context, req Request) Result {
	if err := req.validate(); err != nil {
		return Result{Err: err}
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	attemptCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(attemptCtx, http.MethodPost, req.URL, bytes.NewReader(req.Body))
	if err != nil {
		return Result{Err: fmt.Errorf("webhook: delivery %s: %w", req.DeliveryID, err)}
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	ua := c.UserAgent
	if ua == "" {
		ua = defaultUserAgent
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("User-Agent", ua)
	hreq.Header.Set(HeaderEvent, req.Event)
	hreq.Header.Set(HeaderDelivery, req.DeliveryID)
	hreq.Header.Set(HeaderSignature, Sign(req.Secret, now(), req.Body))

	httpClient := c.HTTP
	if httpClient == nil {
		httpClient = noRedirects
	}
	start := time.Now()
	resp, err := httpClient.Do(hreq)
	if err != nil {
		res := Result{Duration: time.Since(start), Retryable: true}
		switch {
		case ctx.Err() != nil:
			res.Err = fmt.Errorf("webhook: delivery %s abandoned: %w", req.DeliveryID, ctx.Err())
		case errors.Is(attemptCtx.Err(), context.DeadlineExceeded):
			res.Err = fmt.Errorf("webhook: delivery %s: no response within %v: %w", req.DeliveryID, timeout, err)
		default:
			res.Err = fmt.Errorf("webhook: delivery %s: %w", req.DeliveryID, err)
		}
		return res
	}
	excerpt := readExcerpt(resp.Body)
	res := Result{Status: resp.StatusCode, Duration: time.Since(start)}
	code := resp.StatusCode
	switch {
	case code >= 200 && code <= 299:
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly, code == http.StatusTooManyRequests,
		code >= 500 && code <= 599:
		res.Retryable = true
		res.Err = fmt.Errorf("webhook: delivery %s: receiver answered %d %s%s",
			req.DeliveryID, code, http.StatusText(code), excerpt)
	default:
		var where string
		if loc := resp.Header.Get("Location"); code >= 300 && code <= 399 && loc != "" {
			where = fmt.Sprintf(" to %.200q (redirects are not followed)", loc)
		}
		res.Err = fmt.Errorf("webhook: delivery %s refused, not retrying: receiver answered %d %s%s%s",
			req.DeliveryID, code, http.StatusText(code), where, excerpt)
	}
	return res
}

func (r Request) validate() error {
	// The transport rejects bad header values only when sending, and that error would be
	// taken for a network failure and retried in vain.
	if err := checkHeaderValue(HeaderDelivery, r.DeliveryID); err != nil {
		return err
	}
	if err := checkHeaderValue(HeaderEvent, r.Event); err != nil {
		return err
	}
	u, err := url.Parse(r.URL)
	switch {
	case err != nil:
		return fmt.Errorf("webhook: delivery %s: %w", r.DeliveryID, err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("webhook: delivery %s: URL %q is not an http or https URL with a host", r.DeliveryID, r.URL)
	case len(r.Secret) == 0:
		return fmt.Errorf("webhook: delivery %s: no secret: receivers could not trust it", r.DeliveryID)
	}
	return nil
}

func checkHeaderValue(name, v string) error {
	if v == "" || strings.ContainsFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		return fmt.Errorf("webhook: %s %q is empty or holds control characters", name, v)
	}
	return nil
}

// readExcerpt drains and closes body and returns its beginning, formatted for an error.
func readExcerpt(body io.ReadCloser) string {
	defer body.Close()
	buf := make([]byte, excerptBytes)
	n, _ := io.ReadFull(body, buf)
	rest, _ := io.Copy(io.Discard, io.LimitReader(body, drainBytes-excerptBytes))
	text := strings.TrimSpace(string(buf[:n]))
	switch {
	case text == "":
		return ""
	case rest > 0:
		return fmt.Sprintf(": %q (truncated)", text)
	}
	return fmt.Sprintf(": %q", text)
}
