package notify

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/mailer"
	"github.com/pacsflow/pacsflow/pkg/triage"
	"github.com/pacsflow/pacsflow/pkg/webhook"
)

// Rule is a notification rule: a triaged study that matches it is posted,
// signed, to URL, or e-mailed to Email.
type Rule struct {
	// Name identifies the rule in delivery IDs, logs and metrics: letters,
	// digits, '-' and '_'.
	Name string `json:"name"`
	// URL receives the deliveries (http or https); or Email lists the
	// recipients, through the rules' SMTP server.
	URL   string   `json:"url,omitempty"`
	Email []string `json:"email,omitempty"`
	// SecretEnv or SecretFile holds the signing secret of a URL's
	// deliveries (16 bytes at least), so that the rules file itself holds
	// none.
	SecretEnv  string `json:"secret_env,omitempty"`
	SecretFile string `json:"secret_file,omitempty"`
	// MinLevel is the least triage level notified. Default URGENT.
	MinLevel string `json:"min_level,omitempty"`
	// Modalities, Findings and CalledAEs narrow the rule when set: a
	// study with one of the modalities, one of the findings present, sent
	// to one of the AE titles.
	Modalities []string `json:"modalities,omitempty"`
	Findings   []string `json:"findings,omitempty"`
	CalledAEs  []string `json:"called_aes,omitempty"`
	// PHI adds the patient, the study's description and the model's
	// findings and draft to the payload; without it a delivery names the
	// study and its level only.
	PHI bool `json:"phi,omitempty"`

	secret   []byte
	minLevel triage.Level
}

// RulesFile is the format of the notification rules file (JSON).
type RulesFile struct {
	Webhooks []Rule `json:"webhooks"`
	// SMTP is the mail server of the rules with Email.
	SMTP *SMTPSettings `json:"smtp,omitempty"`
}

// SMTPSettings name the mail server in the rules file; the password comes
// from the environment.
type SMTPSettings struct {
	Addr        string `json:"addr"`
	From        string `json:"from"`
	Username    string `json:"username,omitempty"`
	PasswordEnv string `json:"password_env,omitempty"`
}

// Rules are the notification rules and the mail server they use.
type Rules struct {
	Webhooks []Rule
	SMTP     mailer.Config
}

// LoadRules reads and checks a rules file; secrets are read from the
// environment (getenv) or their files.
func LoadRules(path string, getenv func(string) string) (Rules, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Rules{}, fmt.Errorf("rules: %w", err)
	}
	var f RulesFile
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Rules{}, fmt.Errorf("rules %s: %w", path, err)
	}
	var out Rules
	if f.SMTP != nil {
		out.SMTP = mailer.Config{Addr: f.SMTP.Addr, From: f.SMTP.From, Username: f.SMTP.Username}
		if f.SMTP.PasswordEnv != "" {
			out.SMTP.Password = getenv(f.SMTP.PasswordEnv)
		}
		if err := out.SMTP.Check(); err != nil {
			return Rules{}, fmt.Errorf("rules %s: %w", path, err)
		}
	}
	names := map[string]bool{}
	for i := range f.Webhooks {
		r := &f.Webhooks[i]
		if err := r.prepare(getenv); err != nil {
			return Rules{}, fmt.Errorf("rules %s: webhook %d (%s): %w", path, i+1, r.Name, err)
		}
		if len(r.Email) > 0 && f.SMTP == nil {
			return Rules{}, fmt.Errorf("rules %s: webhook %d (%s): e-mail needs the smtp section", path, i+1, r.Name)
		}
		if names[r.Name] {
			return Rules{}, fmt.Errorf("rules %s: webhook name %s used twice", path, r.Name)
		}
		names[r.Name] = true
	}
	out.Webhooks = f.Webhooks
	return out, nil
}

// minSecret is the shortest signing secret accepted: 128 bits.
const minSecret = 16

func (r *Rule) prepare(getenv func(string) string) error {
	if r.Name == "" || events.Token(r.Name) != r.Name || strings.Contains(r.Name, "+") {
		return errors.New("name: want letters, digits, '-' and '_'")
	}
	var err error
	if r.minLevel, err = triage.ParseLevel(cmp.Or(r.MinLevel, events.TriageUrgent)); err != nil {
		return fmt.Errorf("min_level: %w", err)
	}
	r.MinLevel = r.minLevel.String()
	if len(r.Email) > 0 {
		if r.URL != "" || r.SecretEnv != "" || r.SecretFile != "" {
			return errors.New("email: a rule sends e-mail or posts to a url, and e-mail has no secret")
		}
		for _, to := range r.Email {
			if _, err := mail.ParseAddress(to); err != nil {
				return fmt.Errorf("email %q: %w", to, err)
			}
		}
		return nil
	}
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want an http or https URL, or email", r.URL)
	}
	switch {
	case r.SecretEnv != "" && r.SecretFile != "":
		return errors.New("secret_env and secret_file are exclusive")
	case r.SecretEnv != "":
		r.secret = []byte(getenv(r.SecretEnv))
	case r.SecretFile != "":
		b, err := os.ReadFile(r.SecretFile)
		if err != nil {
			return fmt.Errorf("secret_file: %w", err)
		}
		r.secret = []byte(strings.TrimSpace(string(b)))
	}
	if len(r.secret) < minSecret {
		return fmt.Errorf("signing secret (secret_env or secret_file): want %d bytes at least, have %d", minSecret, len(r.secret))
	}
	return nil
}

// WithSecret returns a copy of r signing with secret: for rules made in
// code rather than read from a file.
func (r Rule) WithSecret(secret []byte) (Rule, error) {
	r.SecretEnv, r.SecretFile = "", ""
	r.secret = secret
	if len(secret) < minSecret {
		return r, fmt.Errorf("webhook %s: signing secret: want %d bytes at least", r.Name, minSecret)
	}
	return r, r.prepare(nil)
}

// Checked returns r checked and ready, as LoadRules gives the rules of a
// file: for e-mail rules made in code.
func (r Rule) Checked() (Rule, error) { return r, r.prepare(nil) }

// matches tells whether a triaged study falls under the rule, findings
// aside (they need the worklist entry).
func (r *Rule) matches(t *events.AITriage, calledAE string) bool {
	l, err := triage.ParseLevel(t.Level)
	if err != nil || l < r.minLevel {
		return false
	}
	if len(r.Modalities) > 0 && !slices.ContainsFunc(t.Modalities, func(m string) bool { return slices.Contains(r.Modalities, m) }) {
		return false
	}
	return len(r.CalledAEs) == 0 || slices.ContainsFunc(r.CalledAEs, func(ae string) bool { return events.Token(ae) == calledAE })
}

func (r *Rule) matchesFindings(e *Entry) bool {
	return len(r.Findings) == 0 || slices.ContainsFunc(e.AI.Findings, func(f events.Finding) bool {
		return f.Present && slices.Contains(r.Findings, f.Label)
	})
}

// WebhookConfig configures the notifications.
type WebhookConfig struct {
	Rules []Rule
	// Attempts is how many times a delivery is tried before it is
	// dead-lettered. Default 8.
	Attempts int
	// Backoff is the delay after the first failed attempt, doubling up to
	// MaxBackoff, each spread by ±Jitter of itself. Defaults 2 s, 5 min,
	// 0.2.
	Backoff, MaxBackoff time.Duration
	Jitter              float64
	// Timeout bounds each attempt. Default 10 s.
	Timeout time.Duration
	// Durable names the consumer of ai.triage; replicas share it, so each
	// study is notified once. Default "notify-webhooks".
	Durable string
	// Bucket keeps the delivery log for LogMaxAge. Defaults
	// "pacsflow-notify-deliveries", 7 days.
	Bucket    string
	LogMaxAge time.Duration
	// PublicURL, when set, is the worklist page's address as receivers
	// reach it: deliveries link to the study there.
	PublicURL string
	// Client posts the deliveries. Default: a webhook.Client with Timeout.
	Client *webhook.Client
	// SMTP sends the rules with Email; its Timeout defaults to Timeout.
	SMTP mailer.Config
}

func (c WebhookConfig) withDefaults() (WebhookConfig, error) {
	if c.Attempts == 0 {
		c.Attempts = 8
	}
	if c.Attempts < 1 {
		return c, fmt.Errorf("notify: webhook attempts %d: want 1 or more", c.Attempts)
	}
	if c.Backoff == 0 {
		c.Backoff = 2 * time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 5 * time.Minute
	}
	if c.Jitter == 0 {
		c.Jitter = 0.2
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Durable == "" {
		c.Durable = "notify-webhooks"
	}
	if c.Bucket == "" {
		c.Bucket = "pacsflow-notify-deliveries"
	}
	if c.LogMaxAge == 0 {
		c.LogMaxAge = 7 * 24 * time.Hour
	}
	if c.Client == nil {
		c.Client = &webhook.Client{Timeout: c.Timeout}
	}
	if c.SMTP.Timeout == 0 {
		c.SMTP.Timeout = c.Timeout
	}
	for _, r := range c.Rules {
		if len(r.Email) == 0 {
			continue
		}
		if err := c.SMTP.Check(); err != nil {
			return c, fmt.Errorf("notify: rule %s sends e-mail: %w", r.Name, err)
		}
	}
	return c, nil
}

// EventStudyTriaged is the Pacsflow-Event of a delivery.
const EventStudyTriaged = "study.triaged"

// Payload is the JSON body of a delivery.
type Payload struct {
	// ID is the delivery's ID, also in the Pacsflow-Delivery header: the
	// same on every attempt, so that receivers de-duplicate on it.
	ID               string    `json:"id"`
	Event            string    `json:"event"`
	Rule             string    `json:"rule"`
	StudyInstanceUID string    `json:"study_instance_uid"`
	Level            string    `json:"level"`
	Score            float64   `json:"score"`
	Generation       int       `json:"generation"`
	Modalities       []string  `json:"modalities"`
	CalledAE         string    `json:"called_ae"`
	TriagedAt        time.Time `json:"triaged_at"`
	// URL links to the study on the worklist page, when its public
	// address is configured.
	URL string `json:"url,omitempty"`
	// PHI holds what only rules with phi: true send.
	PHI *PayloadPHI `json:"phi,omitempty"`
}

// PayloadPHI is the identifying and clinical part of a payload.
type PayloadPHI struct {
	Patient          events.Patient `json:"patient"`
	AccessionNumber  string         `json:"accession_number,omitempty"`
	StudyDescription string         `json:"study_description,omitempty"`
	Reason           string         `json:"reason"`
	FindingsSummary  string         `json:"findings_summary,omitempty"`
	// Report is the model's draft: machine-generated, not reviewed.
	Report string `json:"report,omitempty"`
}

// Delivery states in the log.
const (
	DeliveryDelivered = "delivered"
	DeliveryRetrying  = "retrying"
	DeliveryFailed    = "failed"
)

// DeliveryRecord is one delivery in the log: every attempt at posting one
// study's triage to one rule's receiver.
type DeliveryRecord struct {
	ID               string `json:"id"`
	Rule             string `json:"rule"`
	URL              string `json:"url"`
	StudyInstanceUID string `json:"study_instance_uid"`
	Level            string `json:"level"`
	State            string `json:"state"`
	// StreamSeq is the events stream's sequence of the triage event the
	// last attempt was for: a replayed dead letter has a new one.
	StreamSeq uint64    `json:"stream_seq"`
	Attempts  []Attempt `json:"attempts"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Attempt is one try at a delivery.
type Attempt struct {
	At time.Time `json:"at"`
	// Status is the receiver's HTTP status, 0 without an answer.
	Status     int     `json:"status"`
	DurationMS float64 `json:"duration_ms"`
	Error      string  `json:"error,omitempty"`
}

// runWebhooks delivers the notifications of triaged studies until ctx ends.
func (s *Service) runWebhooks(ctx context.Context) error {
	wc := s.cfg.Webhooks
	if len(wc.Rules) == 0 {
		return nil
	}
	return events.Consume(ctx, s.js, events.ConsumerConfig{
		Stream:         s.cfg.Streams.StreamName(),
		Durable:        wc.Durable,
		FilterSubjects: []string{events.SubjectAITriage + ".>"},
		// A new consumer starts now: a service given rules does not post
		// the history of the stream.
		StartTime:  s.cfg.now(),
		AckWait:    wc.Timeout*time.Duration(len(wc.Rules)) + 30*time.Second,
		MaxDeliver: wc.Attempts,
		Delay:      func(n int) time.Duration { return webhook.Backoff(n, wc.Backoff, wc.MaxBackoff, wc.Jitter) },
		Logger:     s.cfg.Logger,
	}, s.notify)
}

// errNotReady is a triage whose findings the worklist does not have yet:
// the rule needs them, and the triage is tried again shortly.
var errNotReady = errors.New("the worklist has not got the study's findings yet")

// notify posts a triaged study to the receiver of every rule it matches,
// skipping those delivered, or refused, on an earlier delivery of the
// event. It fails while a receiver can still accept, so that the event
// comes back after the backoff; its last delivery dead-letters it.
func (s *Service) notify(ctx context.Context, d *events.Delivery) error {
	if d.Event.Type != events.TypeAITriage {
		return nil
	}
	var t events.AITriage
	if err := decode(d, &t); err != nil {
		return err
	}
	subject := strings.Split(d.Event.NATSSubject, ".")
	calledAE := subject[len(subject)-1]
	var (
		entry   *Entry
		retry   []error
		refused []error
	)
	for i := range s.cfg.Webhooks.Rules {
		r := &s.cfg.Webhooks.Rules[i]
		if !r.matches(&t, calledAE) {
			continue
		}
		if entry == nil && (len(r.Findings) > 0 || r.PHI) {
			e, _, err := get[Entry](ctx, s.entries, t.Study.StudyInstanceUID)
			if err != nil {
				return err
			}
			if e == nil || e.AI == nil || e.AI.FindingsGeneration < t.Generation {
				return fmt.Errorf("rule %s: %w", r.Name, errNotReady)
			}
			entry = e
		}
		if entry != nil && !r.matchesFindings(entry) {
			continue
		}
		err := s.deliver(ctx, d, r, &t, calledAE, entry)
		var re *refusal
		switch {
		case errors.As(err, &re):
			refused = append(refused, err)
		case err != nil:
			retry = append(retry, err)
		}
	}
	if len(retry) > 0 {
		return errors.Join(append(retry, refused...)...)
	}
	if len(refused) > 0 {
		return events.Poison(errors.Join(refused...))
	}
	return nil
}

// refusal is a delivery the receiver refused (or that cannot be made):
// trying again cannot help.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// deliver makes one attempt at one rule's delivery, unless an earlier one
// settled it, and logs it.
func (s *Service) deliver(ctx context.Context, d *events.Delivery, r *Rule, t *events.AITriage, calledAE string, e *Entry) error {
	id := d.Event.ID + "/" + r.Name
	key := deliveryKey(id)
	rec, _, err := get[DeliveryRecord](ctx, s.deliveries, key)
	if err != nil {
		return err
	}
	if rec != nil && (rec.State == DeliveryDelivered || rec.State == DeliveryFailed && rec.StreamSeq == d.StreamSeq) {
		// Delivered, or refused, on an earlier delivery of the event; a
		// dead letter replayed (pacsflow dlq replay) is a new message of
		// the stream, and is tried again.
		return nil
	}
	p := Payload{ID: id, Event: EventStudyTriaged, Rule: r.Name, StudyInstanceUID: t.Study.StudyInstanceUID, Level: t.Level,
		Score: t.Score, Generation: t.Generation, Modalities: t.Modalities, CalledAE: calledAE, TriagedAt: d.Event.Time.UTC()}
	if base := s.cfg.Webhooks.PublicURL; base != "" {
		p.URL = strings.TrimRight(base, "/") + "/#study=" + url.QueryEscape(p.StudyInstanceUID)
	}
	if r.PHI {
		p.PHI = &PayloadPHI{Patient: e.Patient, AccessionNumber: e.Study.AccessionNumber, StudyDescription: e.Study.Description, Reason: t.Reason}
		// Only the triage's own generation: an earlier draft or summary
		// would contradict it.
		if e.AI.FindingsGeneration == t.Generation {
			p.PHI.FindingsSummary = e.AI.Summary
		}
		if e.AI.ReportGeneration == t.Generation {
			p.PHI.Report = e.AI.Report
		}
	}
	var res webhook.Result
	if len(r.Email) > 0 {
		res = s.sendMail(ctx, r, &p)
	} else {
		body, err := json.Marshal(p)
		if err != nil {
			return &refusal{fmt.Errorf("webhook %s: encode: %w", r.Name, err)}
		}
		res = s.cfg.Webhooks.Client.Deliver(ctx, webhook.Request{URL: r.URL, Secret: r.secret, DeliveryID: id, Event: EventStudyTriaged, Body: body})
	}
	state := DeliveryDelivered
	switch {
	case res.Err == nil:
	case !res.Retryable:
		state = DeliveryFailed
	case d.Deliveries >= s.cfg.Webhooks.Attempts:
		state = DeliveryFailed
	default:
		state = DeliveryRetrying
	}
	s.m.deliveries.WithLabelValues(r.Name, state).Inc()
	now := s.cfg.now().UTC()
	a := Attempt{At: now, Status: res.Status, DurationMS: float64(res.Duration.Microseconds()) / 1000}
	if res.Err != nil {
		a.Error = res.Err.Error()
	}
	if _, _, _, err := modify(ctx, s.deliveries, key, func(old *DeliveryRecord) (*DeliveryRecord, bool, error) {
		rec := old
		if rec == nil {
			rec = &DeliveryRecord{ID: id, Rule: r.Name, URL: r.receiver(), StudyInstanceUID: p.StudyInstanceUID, Level: p.Level, CreatedAt: now}
		}
		rec.State, rec.StreamSeq, rec.UpdatedAt = state, d.StreamSeq, now
		rec.Attempts = append(rec.Attempts, a)
		return rec, true, nil
	}); err != nil {
		// The attempt happened; without its record a redelivery may post
		// it again, which the delivery ID lets the receiver recognize.
		s.log.Warn("webhook delivery log", "delivery", id, "err", err)
	}
	log := s.log.With("rule", r.Name, "delivery", id, "study", p.StudyInstanceUID, "status", res.Status, "attempt", d.Deliveries)
	switch state {
	case DeliveryDelivered:
		log.Info("webhook delivered", "duration", res.Duration)
		return nil
	case DeliveryFailed:
		log.Error("webhook failed", "err", res.Err)
		if !res.Retryable {
			return &refusal{fmt.Errorf("webhook %s: %w", r.Name, res.Err)}
		}
		return fmt.Errorf("webhook %s: %w", r.Name, res.Err)
	default:
		log.Warn("webhook attempt failed; retrying", "err", res.Err)
		return fmt.Errorf("webhook %s: %w", r.Name, res.Err)
	}
}

// deliveryKey is a delivery's key in the log: delivery IDs hold
// characters keys cannot.
func deliveryKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:16])
}

// receiver names where a rule's deliveries go, for the log: its URL
// without credentials or query, or mailto: its recipients.
func (r *Rule) receiver() string {
	if len(r.Email) > 0 {
		to := make([]string, len(r.Email))
		for i, e := range r.Email {
			a, _ := mail.ParseAddress(e) // checked by prepare
			to[i] = a.Address
		}
		return "mailto:" + strings.Join(to, ",")
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return ""
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

// sendMail makes one attempt at e-mailing a delivery; Status is the SMTP
// reply code when the server gave one.
func (s *Service) sendMail(ctx context.Context, r *Rule, p *Payload) webhook.Result {
	start := time.Now()
	err := mailer.Send(ctx, s.cfg.Webhooks.SMTP, mailOf(r, p))
	res := webhook.Result{Duration: time.Since(start), Retryable: !mailer.IsPermanent(err), Err: err}
	var te *textproto.Error
	switch {
	case err == nil:
		res.Status = 250
	case errors.As(err, &te):
		res.Status = te.Code
	}
	return res
}

// mailOf is the e-mail of a delivery: what the JSON payload says, in
// words.
func mailOf(r *Rule, p *Payload) mailer.Message {
	var b strings.Builder
	fmt.Fprintf(&b, "pacsflow triaged a study %s (score %.2f).\n\n", p.Level, p.Score)
	fmt.Fprintf(&b, "Study Instance UID: %s\nModalities: %s\nSent to AE: %s\nTriaged at: %s\n",
		p.StudyInstanceUID, strings.Join(p.Modalities, ", "), p.CalledAE, p.TriagedAt.Format(time.RFC3339))
	if p.URL != "" {
		fmt.Fprintf(&b, "Worklist: %s\n", p.URL)
	}
	if h := p.PHI; h != nil {
		fmt.Fprintf(&b, "\nPatient: %s (ID %s)\nAccession: %s\nDescription: %s\nWhy: %s\n",
			h.Patient.Name, h.Patient.ID, h.AccessionNumber, h.StudyDescription, h.Reason)
		if h.FindingsSummary != "" {
			fmt.Fprintf(&b, "Findings: %s\n", h.FindingsSummary)
		}
		if h.Report != "" {
			fmt.Fprintf(&b, "\nDraft report (machine-generated, not reviewed by a radiologist):\n%s\n", h.Report)
		}
	}
	fmt.Fprintf(&b, "\nThe level comes from a model's findings, not from a radiologist.\nDelivery %s, rule %s.\n", p.ID, p.Rule)
	return mailer.Message{
		To:      r.Email,
		Subject: fmt.Sprintf("[pacsflow] %s study %s", p.Level, p.StudyInstanceUID),
		Body:    b.String(),
		Headers: map[string]string{webhook.HeaderDelivery: p.ID, webhook.HeaderEvent: p.Event},
	}
}

// maxDeliveries bounds the deliveries listed.
const maxDeliveries = 1000

// listDeliveries answers the delivery log, the latest first:
// ?state=delivered|retrying|failed, ?limit (default 100).
func (s *Service) listDeliveries(w http.ResponseWriter, r *http.Request) {
	state := r.URL.Query().Get("state")
	if state != "" && state != DeliveryDelivered && state != DeliveryRetrying && state != DeliveryFailed {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("state %q: want delivered, retrying or failed", state))
		return
	}
	limit, err := intParam(r.URL.Query().Get("limit"), 100)
	if err != nil || limit < 1 || limit > maxDeliveries {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: an integer 1 to %d", maxDeliveries))
		return
	}
	out := []*DeliveryRecord{}
	keys, err := s.deliveries.ListKeys(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	for key := range keys.Keys() {
		rec, _, err := get[DeliveryRecord](r.Context(), s.deliveries, key)
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			_ = keys.Stop()
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		if rec != nil && (state == "" || rec.State == state) {
			out = append(out, rec)
		}
	}
	slices.SortFunc(out, func(a, b *DeliveryRecord) int { return b.UpdatedAt.Compare(a.UpdatedAt) })
	writeJSON(w, http.StatusOK, map[string]any{"deliveries": out[:min(limit, len(out))]})
}
