package generate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// Rule asks for images for every study with a finding: "for every study
// with a nodule, synthesize 4 variants conditioned on 'nodule'".
type Rule struct {
	// Label is the finding, as the model names it.
	Label string
	Task  string
	Count int
	// Prompt conditions the images; default the label.
	Prompt string
}

func (r Rule) String() string { return fmt.Sprintf("%s=%s:%d:%s", r.Label, r.Task, r.Count, r.Prompt) }

// ParsePolicy reads rules "label=task:count[:prompt]", comma-separated,
// e.g. "nodule=synthesize:4,effusion=restore:1".
func ParsePolicy(s string) ([]Rule, error) {
	var rules []Rule
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		label, spec, ok := strings.Cut(part, "=")
		fields := strings.SplitN(spec, ":", 3)
		if !ok || label == "" || len(fields) < 2 {
			return nil, fmt.Errorf("generate rule %q: want label=task:count[:prompt], e.g. nodule=synthesize:4", part)
		}
		n, err := strconv.Atoi(fields[1])
		if err != nil || n < 1 || n > 64 {
			return nil, fmt.Errorf("generate rule %q: count %q: want 1 to 64", part, fields[1])
		}
		r := Rule{Label: label, Task: fields[0], Count: n, Prompt: label}
		if len(fields) == 3 {
			r.Prompt = fields[2]
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// applyPolicy turns a study's findings into requests, one per rule whose
// finding is present. The request ID derives from the study, its
// generation and the rule, so a findings event handled twice asks once.
func (s *Service) applyPolicy(ctx context.Context, d *events.Delivery) error {
	if d.Event.Type != events.TypeAIFindings {
		return nil
	}
	var f events.AIFindings
	if err := json.Unmarshal(d.Event.Data, &f); err != nil {
		return events.Poison(fmt.Errorf("findings event %s: %w", d.Event.ID, err))
	}
	for _, r := range s.cfg.Policy {
		for _, fi := range f.Findings {
			if fi.Label != r.Label || !fi.Present {
				continue
			}
			req := &events.AugmentationRequested{
				RequestID:        RequestID("policy", f.Study.StudyInstanceUID, strconv.Itoa(f.Generation), r.String()),
				StudyInstanceUID: f.Study.StudyInstanceUID, SOPInstanceUID: fi.SOPInstanceUID,
				Task: r.Task, Prompt: r.Prompt, Count: r.Count, RequestedBy: "policy:" + r.Label, RequestedAt: f.AnalyzedAt,
			}
			if _, err := s.pub.Publish(ctx, RequestEvent(req)); err != nil {
				return err
			}
			s.m.policy.WithLabelValues(r.Label).Inc()
		}
	}
	return nil
}

// RequestID derives a request's ID from what makes it: the same parts give
// the same ID, and so the same images under the same UIDs. kind says who
// asks (cli, http, policy).
func RequestID(kind string, parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return kind + "-" + hex.EncodeToString(sum[:12])
}

// NewRequest completes a request made by kind (cli, http) from its parameters: its ID, who
// asked, when; the same parameters give the same ID, and so the same images. It returns the
// request's event.
func NewRequest(kind string, r *events.AugmentationRequested) *events.Event {
	r.RequestedBy = kind
	r.RequestID = RequestID(kind, r.StudyInstanceUID, r.SOPInstanceUID, r.Task, r.Prompt, strconv.Itoa(r.Count), strconv.FormatInt(r.Seed, 10))
	return RequestEvent(r)
}

// RequestEvent is the event of a request, its time the request's.
func RequestEvent(r *events.AugmentationRequested) *events.Event {
	if r.RequestedAt.IsZero() {
		r.RequestedAt = time.Now().UTC()
	}
	return &events.Event{
		ID: "ai-augmentation-request/" + r.RequestID, Type: events.TypeAugmentationRequested, Subject: r.StudyInstanceUID,
		Time: r.RequestedAt, NATSSubject: events.AugmentationSubject(events.SubjectAugmentationRequested, r.Task), Data: r,
	}
}
