package understand

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// record is a study's analysis up to one generation, as kept in the
// bucket: the data of the events published for it, so that they can be
// published again unchanged, and what the next generation and ai.ask need.
type record struct {
	Generation int                   `json:"generation"`
	CalledAE   string                `json:"called_ae"`
	Findings   events.AIFindings     `json:"findings"`
	Report     *events.AIReportDraft `json:"report,omitempty"`
	Triage     events.AITriage       `json:"triage"`
	KeyImage   *keyImage             `json:"key_image,omitempty"`
}

// keyImage is the image with the most probable finding of a study: its
// report is the study's draft, and ai.ask questions are about it.
type keyImage struct {
	SOPInstanceUID string              `json:"sop_instance_uid"`
	Frame          int                 `json:"frame"`
	Object         events.StoredObject `json:"object"`
	// Score is the image's highest finding probability.
	Score  float64 `json:"score"`
	Report string  `json:"report"`
}

// load reads a study's record and its revision; nil and 0 when there is
// none.
func (s *Service) load(ctx context.Context, key string) (*record, uint64, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read the analysis of %s: %w", key, err)
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("read the analysis of %s: %w", key, err)
	}
	return &r, e.Revision(), nil
}

// save stores a study's record if it is still at revision rev (0: absent),
// so that two replicas analyzing the same study cannot overwrite each
// other's generation: the loser's event is retried and finds the winner's.
func (s *Service) save(ctx context.Context, key string, r *record, rev uint64) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode the analysis of %s: %w", key, err)
	}
	if rev == 0 {
		_, err = s.kv.Create(ctx, key, b)
	} else {
		_, err = s.kv.Update(ctx, key, b, rev)
	}
	if err != nil {
		return fmt.Errorf("store the analysis of %s: %w", key, err)
	}
	return nil
}
