package benchkit

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/synth"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// CalledAE is the AE title the study events name, as if sent to pacsflow.
const CalledAE = "PACSFLOW"

// sopClasses are the SOP classes synth writes, by modality.
var sopClasses = map[string]string{"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}

// StudyData builds a synthetic study's pacs.study.received data as ingest
// would (series, instances, object keys, generation 1) from its instances
// put into the object store.
type StudyData struct {
	d      *events.StudyReceived
	series map[string]int // index in d.Series by series UID
}

// NewStudyData starts the data of study ts, without instances.
func NewStudyData(ts synth.Study) *StudyData {
	return &StudyData{
		d: &events.StudyReceived{
			Patient:    events.Patient{ID: ts.PatientID, Name: ts.PatientName},
			Study:      events.Study{StudyInstanceUID: ts.StudyInstanceUID, AccessionNumber: ts.AccessionNumber, Description: "SYNTHETIC CHEST PHANTOM"},
			CallingAEs: []string{"BENCH"}, CalledAEs: []string{CalledAE}, Associations: []string{"bench-" + ts.AccessionNumber},
			Trigger: events.TriggerQuietPeriod, Generation: 1,
		},
		series: map[string]int{},
	}
}

// Add adds instance f, stored as obj under key, to its series (numbered in
// the order they are first met).
func (s *StudyData) Add(f synth.File, key string, obj storage.Object) {
	d := s.d
	if d.FirstReceivedAt.IsZero() {
		d.FirstReceivedAt = obj.Modified
	}
	d.LastReceivedAt = obj.Modified
	i, ok := s.series[f.SeriesInstanceUID]
	if !ok {
		i = len(d.Series)
		s.series[f.SeriesInstanceUID] = i
		d.Series = append(d.Series, events.SeriesManifest{SeriesInstanceUID: f.SeriesInstanceUID, SeriesNumber: i + 1, Modality: f.Modality})
		if !slices.Contains(d.Modalities, f.Modality) {
			d.Modalities = append(d.Modalities, f.Modality)
		}
	}
	se := &d.Series[i]
	se.Instances = append(se.Instances, events.InstanceRef{
		SOPInstanceUID: f.SOPInstanceUID, SOPClassUID: sopClasses[f.Modality], InstanceNumber: len(se.Instances) + 1,
		TransferSyntaxUID: uid.ExplicitVRLittleEndian, ReceivedAt: obj.Modified,
		Object: events.StoredObject{Backend: events.BackendObjectStore, Bucket: objstore.DefaultBucket, Key: key, Size: obj.Size, SHA256: obj.SHA256},
	})
	se.NumInstances++
	se.Bytes += obj.Size
	d.NumInstances++
	d.Bytes += obj.Size
}

// Done completes the data and checks that its event is one the services'
// contract accepts: otherwise a benchmark would measure a rejection.
func (s *StudyData) Done() (*events.StudyReceived, error) {
	d := s.d
	sort.Strings(d.Modalities)
	d.NumSeries = len(d.Series)
	m, err := StudyEvent(d).Message()
	if err == nil {
		err = events.ValidateMessage(m.Subject, m.Header, m.Data)
	}
	if err != nil {
		return nil, fmt.Errorf("study event of %s: %w", d.Study.StudyInstanceUID, err)
	}
	return d, nil
}

// StudyEvent is a new pacs.study.received event of the study d; its time is
// set when it is published.
func StudyEvent(d *events.StudyReceived) *events.Event {
	u := d.Study.StudyInstanceUID
	return &events.Event{
		ID: "study/" + u + "/1", Type: events.TypeStudyReceived, Source: "pacsflow/bench", Subject: u,
		NATSSubject: events.StudySubject(events.SubjectStudyReceived, d.Modalities, CalledAE), Data: d,
	}
}

// PutFile puts the file at path into store under key.
func PutFile(ctx context.Context, store *objstore.Store, key, path string) (storage.Object, error) {
	f, err := os.Open(path)
	if err != nil {
		return storage.Object{}, fmt.Errorf("put instance: %w", err)
	}
	defer f.Close()
	return store.Put(ctx, key, f)
}
