package generate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// indexBucket keeps, per study, the instances its study events listed.
const indexBucket = "pacsflow-generate-index"

// index is the service's own record of the studies' instances, so that a
// request needs to name only a study.
type index struct {
	kv jetstream.KeyValue
}

// indexedInstance is one instance of a study, as its study event listed it.
type indexedInstance struct {
	SOPInstanceUID string              `json:"sop_instance_uid"`
	Modality       string              `json:"modality"`
	Object         events.StoredObject `json:"object"`
}

type indexedStudy struct {
	// Generations are the study events recorded, so that one handled twice
	// adds nothing.
	Generations []int             `json:"generations"`
	Instances   []indexedInstance `json:"instances"`
}

// pick returns the instance sop, or, when sop is empty, the first instance
// of a modality the model accepts.
func (st *indexedStudy) pick(sop string, accepted map[string]bool) (indexedInstance, bool) {
	for _, in := range st.Instances {
		if sop == "" && accepted[in.Modality] || sop != "" && in.SOPInstanceUID == sop {
			return in, true
		}
	}
	return indexedInstance{}, false
}

func openIndex(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration) (*index, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      indexBucket,
		Description: "pacsflow generate: the instances of each study, from its study events",
		History:     1,
		TTL:         maxAge,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", indexBucket, err)
	}
	return &index{kv: kv}, nil
}

func (x *index) get(ctx context.Context, study string) (*indexedStudy, error) {
	st, _, err := x.load(ctx, study)
	return st, err
}

func (x *index) load(ctx context.Context, study string) (*indexedStudy, uint64, error) {
	e, err := x.kv.Get(ctx, study)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read the index of study %s: %w", study, err)
	}
	var st indexedStudy
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, 0, fmt.Errorf("read the index of study %s: %w", study, err)
	}
	return &st, e.Revision(), nil
}

// handle records the instances of a study event. Two replicas recording
// the same study at once: the loser of the compare-and-set retries.
func (x *index) handle(ctx context.Context, d *events.Delivery) error {
	if d.Event.Type != events.TypeStudyReceived && d.Event.Type != events.TypeStudyUpdated {
		return nil
	}
	var ev events.StudyReceived
	if err := json.Unmarshal(d.Event.Data, &ev); err != nil {
		return events.Poison(fmt.Errorf("study event %s: %w", d.Event.ID, err))
	}
	uid := ev.Study.StudyInstanceUID
	st, rev, err := x.load(ctx, uid)
	if err != nil {
		return err
	}
	if st == nil {
		st = &indexedStudy{}
	}
	for _, g := range st.Generations {
		if g == ev.Generation {
			return nil
		}
	}
	st.Generations = append(st.Generations, ev.Generation)
	for _, se := range ev.Series {
		for _, in := range se.Instances {
			st.Instances = append(st.Instances, indexedInstance{SOPInstanceUID: in.SOPInstanceUID, Modality: se.Modality, Object: in.Object})
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("index study %s: %w", uid, err)
	}
	if rev == 0 {
		_, err = x.kv.Create(ctx, uid, b)
	} else {
		_, err = x.kv.Update(ctx, uid, b, rev)
	}
	if err != nil {
		return fmt.Errorf("index study %s: %w", uid, err)
	}
	return nil
}
