package analytics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/deid"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// key returns a fresh copy of a fixed key, as a restarted service reads it
// again from its configuration.
func key(seed byte) []byte {
	return bytes.Repeat([]byte{seed, 0x3c, 0xa5, seed ^ 0xff}, 8)
}

func projector(t testing.TB, seed byte, mode deid.DateMode) *Projector {
	t.Helper()
	p, err := New(deid.Config{Key: key(seed), DateMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// check says how the leak test looks for a field's original value in the
// projected message.
type check int

const (
	// kept: the profile keeps the value (K); it may appear.
	kept check = iota
	// text: neither the value nor any run of minRun of its characters may
	// appear, so a pseudonym that kept part of an ID (the number without
	// its prefix, say) is caught too.
	text
	// tail: a string of a fixed vocabulary (a subject, a source) whose last
	// '.' or '/' separated part is identifying: the whole value, and the
	// tail as text, must not appear.
	tail
	// path: an event ID, kind/value/...: each value of at least minRun
	// characters, as text, must not appear; the kind is vocabulary.
	path
	// date: a DA value must not appear as YYYYMMDD nor as YYYY-MM-DD.
	date
	// timeOfDay: a TM value, checked as text when dates are removed; a
	// shift by whole days keeps it (C).
	timeOfDay
	// timestamp: neither the time nor its day may appear; when dates are
	// removed, neither may its time of day.
	timestamp
	// projected: the event data, checked field by field.
	projected
)

// minRun is the shortest run of an original value the leak test looks
// for. Shorter runs of digits and hex would turn up by chance in the
// 39-digit pseudonym UIDs and the hex digests.
const minRun = 7

// rule classifies one field of the PHI events: the PS3.15 Table E.1-1 row
// it carries (or what it is, when no DICOM attribute), the action the
// projection applies (package deid documents each), and the leak check
// that proves it.
type rule struct {
	attr, action string
	check        check
}

// Rules for every field of the PHI event types, keyed Type.Field.
// TestEveryFieldClassified fails when a field is missing here.
var rules = map[string]rule{
	// The envelope.
	"Received.ID":          {"no attribute: holds the SOP Instance UID and the digest", "keyed hash (deid.EventID)", path},
	"Received.Type":        {"no attribute: the event type", "K, mapped to the analytics type", kept},
	"Received.Source":      {"no attribute: names the ingest host", "X, the publisher names the projector", tail},
	"Received.Subject":     {"Study Instance UID (0020,000D)", "U, from the data", text},
	"Received.Time":        {"no attribute: time of receipt, as Study Date", "Z / C", timestamp},
	"Received.NATSSubject": {"no attribute: names the called AE title", "X, the analytics subject names modalities only", tail},
	"Received.Data":        {"the event data", "projected field by field", projected},

	"Patient.ID":        {"Patient ID (0010,0020)", "Z, keyed pseudonym", text},
	"Patient.Name":      {"Patient's Name (0010,0010)", "Z, removed", text},
	"Patient.BirthDate": {"Patient's Birth Date (0010,0030)", "Z, removed", date},
	"Patient.Sex":       {"Patient's Sex (0010,0040)", "Z, removed", text},

	"Study.StudyInstanceUID":           {"Study Instance UID (0020,000D)", "U", text},
	"Study.AccessionNumber":            {"Accession Number (0008,0050)", "Z, keyed pseudonym", text},
	"Study.StudyID":                    {"Study ID (0020,0010)", "Z, removed", text},
	"Study.Date":                       {"Study Date (0008,0020)", "Z / C shifted", date},
	"Study.Time":                       {"Study Time (0008,0030)", "Z / C kept", timeOfDay},
	"Study.Description":                {"Study Description (0008,1030)", "X", text},
	"Study.ReferringPhysicianName":     {"Referring Physician's Name (0008,0090)", "Z, removed", text},
	"Study.RequestedProcedurePriority": {"Requested Procedure Priority (0040,1003): not in the table", "K, defined terms only", kept},

	"Association.ID":            {"no attribute: pacsflow's association ID", "keyed pseudonym", text},
	"Association.CallingAE":     {"no attribute; nearest Performed Station AE Title (0040,0241)", "X / K, keyed pseudonym", text},
	"Association.CalledAE":      {"no attribute; nearest Scheduled Study Location AE Title (0032,1021)", "X / K, keyed pseudonym", text},
	"Association.SourceAddress": {"no attribute: the sender's network address", "X", text},

	"StoredObject.Backend": {"no attribute: configuration", "K", kept},
	"StoredObject.Bucket":  {"no attribute: configuration that may name the site", "X", text},
	"StoredObject.Key":     {"no attribute: holds the Study, Series and SOP Instance UIDs and the storage time", "X", text},
	"StoredObject.Size":    {"no attribute: a size", "K", kept},
	"StoredObject.SHA256":  {"no attribute: a digest of bytes with PHI", "keyed pseudonym", text},

	"InstanceStored.SeriesInstanceUID": {"Series Instance UID (0020,000E)", "U", text},
	"InstanceStored.SeriesNumber":      {"Series Number (0020,0011): not in the table", "K", kept},
	"InstanceStored.SeriesDescription": {"Series Description (0008,103E)", "X", text},
	"InstanceStored.Modality":          {"Modality (0008,0060): not in the table", "K, codes only", kept},
	"InstanceStored.BodyPartExamined":  {"Body Part Examined (0018,0015): not in the table", "K, codes only", kept},
	"InstanceStored.SOPClassUID":       {"SOP Class UID (0008,0016): not in the table", "K", kept},
	"InstanceStored.SOPInstanceUID":    {"SOP Instance UID (0008,0018), Media Storage SOP Instance UID (0002,0003)", "U", text},
	"InstanceStored.InstanceNumber":    {"Instance Number (0020,0013): not in the table", "K", kept},
	"InstanceStored.NumberOfFrames":    {"Number of Frames (0028,0008): not in the table", "K", kept},
	"InstanceStored.TransferSyntaxUID": {"Transfer Syntax UID (0002,0010): not in the table", "K", kept},
	"InstanceStored.ReplacesSHA256":    {"no attribute: a digest of bytes with PHI", "keyed pseudonym", text},
	"InstanceStored.ReceivedAt":        {"no attribute: time of receipt, as Study Date", "Z / C", timestamp},

	"InstanceRef.SOPInstanceUID":    {"SOP Instance UID (0008,0018)", "U", text},
	"InstanceRef.SOPClassUID":       {"SOP Class UID (0008,0016): not in the table", "K", kept},
	"InstanceRef.InstanceNumber":    {"Instance Number (0020,0013): not in the table", "K", kept},
	"InstanceRef.NumberOfFrames":    {"Number of Frames (0028,0008): not in the table", "K", kept},
	"InstanceRef.TransferSyntaxUID": {"Transfer Syntax UID (0002,0010): not in the table", "K", kept},
	"InstanceRef.ReceivedAt":        {"no attribute: time of receipt, as Study Date", "Z / C", timestamp},

	"SeriesManifest.SeriesInstanceUID": {"Series Instance UID (0020,000E)", "U", text},
	"SeriesManifest.SeriesNumber":      {"Series Number (0020,0011): not in the table", "K", kept},
	"SeriesManifest.Modality":          {"Modality (0008,0060): not in the table", "K, codes only", kept},
	"SeriesManifest.Description":       {"Series Description (0008,103E)", "X", text},
	"SeriesManifest.BodyPartExamined":  {"Body Part Examined (0018,0015): not in the table", "K, codes only", kept},
	"SeriesManifest.NumInstances":      {"no attribute: a count", "K", kept},
	"SeriesManifest.Bytes":             {"no attribute: a size", "K", kept},

	"StudyReceived.Modalities":      {"Modality (0008,0060): not in the table", "K, codes only", kept},
	"StudyReceived.NumSeries":       {"no attribute: a count", "K", kept},
	"StudyReceived.NumInstances":    {"no attribute: a count", "K", kept},
	"StudyReceived.Bytes":           {"no attribute: a size", "K", kept},
	"StudyReceived.CallingAEs":      {"no attribute; nearest Performed Station AE Title (0040,0241)", "X / K, keyed pseudonym", text},
	"StudyReceived.CalledAEs":       {"no attribute; nearest Scheduled Study Location AE Title (0032,1021)", "X / K, keyed pseudonym", text},
	"StudyReceived.Associations":    {"no attribute: pacsflow's association IDs", "keyed pseudonym", text},
	"StudyReceived.FirstReceivedAt": {"no attribute: time of receipt, as Study Date", "Z / C", timestamp},
	"StudyReceived.LastReceivedAt":  {"no attribute: time of receipt, as Study Date", "Z / C", timestamp},
	"StudyReceived.Trigger":         {"no attribute: pacsflow's reason", "K", kept},
	"StudyReceived.Generation":      {"no attribute: a count", "K", kept},
}

// phiTypes are the types whose every field the rules classify.
var phiTypes = []reflect.Type{reflect.TypeFor[events.Received](), reflect.TypeFor[events.InstanceStored](), reflect.TypeFor[events.StudyReceived]()}

var timeType = reflect.TypeFor[time.Time]()

// container reports whether values of t are walked into rather than
// classified: structs other than time.Time, and slices of them.
func container(t reflect.Type) (reflect.Type, bool) {
	if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct {
		t = t.Elem()
	}
	return t, t.Kind() == reflect.Struct && t != timeType
}

// fieldsOf records the classifiable fields of t and of the types it holds.
func fieldsOf(t reflect.Type, into map[string]bool) {
	for f := range t.Fields() {
		if ct, ok := container(f.Type); ok {
			fieldsOf(ct, into)
			continue
		}
		into[t.Name()+"."+f.Name] = true
	}
}

// leaves calls fn with each classifiable field value held in v, named
// Type.Field.
func leaves(v reflect.Value, fn func(field string, v reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		f, fv := t.Field(i), v.Field(i)
		if _, ok := container(f.Type); !ok {
			fn(t.Name()+"."+f.Name, fv)
			continue
		}
		if fv.Kind() == reflect.Slice {
			for j := range fv.Len() {
				leaves(fv.Index(j), fn)
			}
			continue
		}
		leaves(fv, fn)
	}
}

func TestEveryFieldClassified(t *testing.T) {
	fields := map[string]bool{}
	for _, typ := range phiTypes {
		fieldsOf(typ, fields)
	}
	for f := range fields {
		if r, ok := rules[f]; !ok {
			t.Errorf("field %s of the PHI events is not classified: add its PS3.15 Table E.1-1 row and action to rules, "+
				"project it (or leave it out of the analytics types), and add it to the table of package deid", f)
		} else if r.attr == "" || r.action == "" {
			t.Errorf("rule for %s lacks its attribute or action", f)
		}
	}
	for f := range rules {
		if !fields[f] {
			t.Errorf("rule for %s, which the PHI events no longer have", f)
		}
	}
}

// Distinctive originals: UIDs under a root no pseudonym has, dates and
// times two years or more apart (further than any shift), names and IDs
// that exist nowhere else.
const (
	studyUID    = "1.2.826.0.1.3680043.999.1"
	seriesUID   = "1.2.826.0.1.3680043.999.2"
	sopUID      = "1.2.826.0.1.3680043.999.3"
	headerUID   = "1.2.826.0.1.3680043.999.4"
	digest      = "1d4dbfd8c1919be97e02aba680859385f1ee753b9dfcd920774dd17b2b7b2ecd"
	priorDigest = "c7d3593de3aa3ad3c01941b0823eaf8478bad52eab494e010c9c45ada08a06d0"
	patientID   = "MRN-5550123"
)

func at(year int, month time.Month, day, h, m, s, ns int) time.Time {
	return time.Date(year, month, day, h, m, s, ns, time.UTC)
}

func samplePatient() events.Patient {
	return events.Patient{ID: patientID, Name: "LEAKNAME^JANE^Q", BirthDate: "19500704", Sex: "LEAK-SEX-O"}
}

func sampleStudy() events.Study {
	return events.Study{
		StudyInstanceUID: studyUID, AccessionNumber: "ACC-2026-77341", StudyID: "STUDYID-8812",
		Date: "20061219", Time: "111154.812345", Description: "CT HEAD LEAK-DESC 4471",
		ReferringPhysicianName: "LEAKREF^THOMAS", RequestedProcedurePriority: "STAT",
	}
}

func sampleInstanceData() *events.InstanceStored {
	return &events.InstanceStored{
		Patient: samplePatient(), Study: sampleStudy(),
		SeriesInstanceUID: seriesUID, SeriesNumber: 7, SeriesDescription: "AX LEAK-SERIES 9931",
		Modality: "CT", BodyPartExamined: "HEAD", SOPClassUID: uid.CTImageStorage, SOPInstanceUID: sopUID,
		InstanceNumber: 12, NumberOfFrames: 3, TransferSyntaxUID: uid.ExplicitVRLittleEndian,
		Object: events.StoredObject{Backend: "objectstore", Bucket: "leak-bucket-st-marys",
			Key: studyUID + "/" + seriesUID + "/" + sopUID + ".18ebcfd945ef36dc-081af1a82b2a", Size: 528150, SHA256: digest},
		ReplacesSHA256: priorDigest,
		Association: events.Association{ID: "970ff715f3b74955", CallingAE: "LEAK_CT_SCAN_1", CalledAE: "LEAK_ARCHIVE_9",
			SourceAddress: "10.77.31.42:57048"},
		ReceivedAt: at(2026, 11, 27, 5, 30, 8, 527577794),
	}
}

func sampleStudyData() *events.StudyReceived {
	ref := func(n string, size int64, when time.Time) events.InstanceRef {
		u := seriesUID + "." + n
		return events.InstanceRef{SOPInstanceUID: u, SOPClassUID: uid.CTImageStorage, InstanceNumber: int(size % 97), NumberOfFrames: 1,
			TransferSyntaxUID: uid.ExplicitVRLittleEndian,
			Object: events.StoredObject{Backend: "fs", Bucket: "leak-bucket-2-st-marys", Key: studyUID + "/" + seriesUID + "/" + u + ".18ebcfd9455aa921-265ea7d30be1",
				Size: size, SHA256: strings.Repeat(n, 64)[:64]},
			ReceivedAt: when}
	}
	return &events.StudyReceived{
		Patient: samplePatient(), Study: sampleStudy(), Modalities: []string{"CT", "SR"},
		Series: []events.SeriesManifest{
			{SeriesInstanceUID: seriesUID, SeriesNumber: 1, Modality: "CT", Description: "AX LEAK-SERIES 9931", BodyPartExamined: "HEAD",
				NumInstances: 2, Bytes: 1056300, Instances: []events.InstanceRef{
					ref("11", 528150, at(2015, 2, 3, 4, 5, 6, 700000001)),
					ref("12", 528151, at(2013, 7, 8, 9, 10, 11, 120000002)),
				}},
			{SeriesInstanceUID: seriesUID + ".99", SeriesNumber: 2, Modality: "SR", Description: "LEAK-SR-DESC 5561", BodyPartExamined: "CHEST",
				NumInstances: 1, Bytes: 4321, Instances: []events.InstanceRef{ref("13", 4321, at(2011, 10, 12, 13, 14, 15, 160000003))}},
		},
		NumSeries: 2, NumInstances: 3, Bytes: 1060621,
		CallingAEs: []string{"LEAK_CT_SCAN_1", "LEAK_SR_NODE_2"}, CalledAEs: []string{"LEAK_ARCHIVE_9"},
		Associations:    []string{"970ff715f3b74955", "a1b2c3d4e5f60718"},
		FirstReceivedAt: at(2019, 6, 1, 2, 3, 4, 500000005), LastReceivedAt: at(2017, 9, 9, 21, 22, 23, 240000006),
		Trigger: "quiet-period", Generation: 1,
	}
}

// received wraps data as the consumer reads it.
func received(t testing.TB, typ, id string, when time.Time, data any) *events.Received {
	t.Helper()
	body, err := json.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	return &events.Received{
		ID: id, Type: typ, Source: "pacsflow/ingest/leakhost-ward7", Subject: headerUID, Time: when,
		NATSSubject: "pacs.instance.stored.CT.LEAK_ARCHIVE_9", Data: body,
	}
}

func sampleInstance(t testing.TB) *events.Received {
	return received(t, events.TypeInstanceStored, "instance/"+sopUID+"/"+digest, at(2023, 3, 14, 22, 41, 5, 123456789), sampleInstanceData())
}

func sampleStudyEvent(t testing.TB, typ string) *events.Received {
	return received(t, typ, "study/"+studyUID+"/1", at(2009, 1, 2, 3, 4, 5, 600000007), sampleStudyData())
}

// runs returns the value and every run of minRun of its characters.
func runs(s string) []string {
	out := []string{s}
	for i := 0; i+minRun <= len(s); i++ {
		out = append(out, s[i:i+minRun])
	}
	return out
}

// forbidden lists the strings whose presence in the projected message
// would leak v, an original value of a field classified by r.
func forbidden(r rule, v reflect.Value, mode deid.DateMode) []string {
	if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String {
		var out []string
		for i := range v.Len() {
			out = append(out, forbidden(r, v.Index(i), mode)...)
		}
		return out
	}
	switch r.check {
	case text:
		return runs(v.String())
	case tail:
		s := v.String()
		return append([]string{s}, runs(s[strings.LastIndexAny(s, "./")+1:])...)
	case path:
		out := []string{v.String()}
		for _, part := range strings.Split(v.String(), "/")[1:] {
			if len(part) >= minRun {
				out = append(out, runs(part)...)
			}
		}
		return out
	case date:
		d, err := time.Parse("20060102", v.String())
		if err != nil {
			panic("sample date " + v.String())
		}
		return []string{v.String(), d.Format(time.DateOnly)}
	case timeOfDay:
		if mode == deid.DateShift {
			return nil
		}
		return runs(v.String())
	case timestamp:
		tm := v.Interface().(time.Time).UTC()
		out := []string{tm.Format(time.RFC3339Nano), tm.Format(time.DateOnly), tm.Format("20060102")}
		if mode == deid.DateRemove {
			out = append(out, tm.Format(time.TimeOnly), tm.Format("150405"))
		}
		return out
	}
	return nil
}

// originals lists, per field, what must not appear in the projection of
// ev, and fails if the sample leaves a field empty (so that every field is
// tested with a value).
func originals(t *testing.T, ev *events.Received, data any, mode deid.DateMode) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	visit := func(field string, v reflect.Value) {
		r, ok := rules[field]
		if !ok {
			t.Fatalf("field %s has no rule", field)
		}
		if v.IsZero() || v.Kind() == reflect.Slice && v.Len() == 0 {
			t.Fatalf("the sample leaves %s empty: give it a distinctive value", field)
		}
		out[field] = append(out[field], forbidden(r, v, mode)...)
	}
	leaves(reflect.ValueOf(*ev), visit)
	leaves(reflect.ValueOf(data).Elem(), visit)
	return out
}

// wire is everything a subscriber receives: subject, headers and body. It
// fails the test when the message breaks the event contract.
func wire(t *testing.T, e *events.Event) []byte {
	t.Helper()
	if e.Source == "" {
		e.Source = "pacsflow/analytics/test"
	}
	m, err := e.Message()
	if err != nil {
		t.Fatal(err)
	}
	// The analytics events follow the contract: subject, headers, schema.
	if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
		t.Error(err)
	}
	var b bytes.Buffer
	b.WriteString(m.Subject + "\n")
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString(k + ": " + strings.Join(m.Header[k], ", ") + "\n")
	}
	b.Write(m.Data)
	return b.Bytes()
}

func TestNoPHILeaks(t *testing.T) {
	for _, mode := range []deid.DateMode{deid.DateShift, deid.DateRemove} {
		p := projector(t, 1, mode)
		for _, tc := range []struct {
			ev   *events.Received
			data any
		}{
			{sampleInstance(t), sampleInstanceData()},
			{sampleStudyEvent(t, events.TypeStudyReceived), sampleStudyData()},
			{sampleStudyEvent(t, events.TypeStudyUpdated), sampleStudyData()},
		} {
			name := string(mode) + " " + tc.ev.Type
			out, err := p.Project(tc.ev)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got := wire(t, out)
			if bytes.Contains(bytes.ToUpper(got), []byte("LEAK")) {
				t.Errorf("%s: a LEAK marker in\n%s", name, got)
			}
			for field, vals := range originals(t, tc.ev, tc.data, mode) {
				for _, v := range vals {
					if bytes.Contains(got, []byte(v)) {
						t.Errorf("%s: %s (%s, %s) leaks as %q in\n%s", name, field, rules[field].attr, rules[field].action, v, got)
					}
				}
			}
		}
	}
}

func project(t *testing.T, p *Projector, ev *events.Received, data any) *events.Event {
	t.Helper()
	out, err := p.Project(ev)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(out.Data)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, data); err != nil {
		t.Fatal(err)
	}
	return out
}

func day(t *testing.T, da string) time.Time {
	t.Helper()
	d, err := time.Parse("20060102", da)
	if err != nil {
		t.Fatalf("date %q: %v", da, err)
	}
	return d
}

func TestProjectInstance(t *testing.T) {
	d, err := deid.New(deid.Config{Key: key(1), DateMode: deid.DateShift})
	if err != nil {
		t.Fatal(err)
	}
	src := sampleInstance(t)
	var got events.AnalyticsInstanceStored
	e := project(t, projector(t, 1, deid.DateShift), src, &got)

	if e.Type != events.TypeAnalyticsInstanceStored || e.NATSSubject != "analytics.instance.stored.CT" || e.Source != "" {
		t.Errorf("envelope: type %s, subject %s, source %q", e.Type, e.NATSSubject, e.Source)
	}
	if e.ID != d.EventID(src.ID) || e.Subject != d.PseudonymizeUID(studyUID) || e.Subject != got.Study.StudyInstanceUID {
		t.Errorf("ID %s, ce-subject %s; want the keyed event ID and the study's pseudonym UID %s", e.ID, e.Subject, got.Study.StudyInstanceUID)
	}
	// Shift: study date, receipt and event time move back by the same
	// days, which keeps their intervals; the time of day stays.
	back := day(t, "20061219").Sub(day(t, got.Study.Date))
	if back < 24*time.Hour || back > 365*24*time.Hour ||
		src.Time.Sub(e.Time) != back || sampleInstanceData().ReceivedAt.Sub(got.ReceivedAt) != back {
		t.Errorf("study date moved back %v, event time %v, receipt %v", back, src.Time.Sub(e.Time), sampleInstanceData().ReceivedAt.Sub(got.ReceivedAt))
	}
	for _, u := range []string{got.Study.StudyInstanceUID, got.SeriesInstanceUID, got.SOPInstanceUID} {
		if err := uid.Validate(u); err != nil {
			t.Errorf("pseudonym UID: %v", err)
		}
	}
	want := events.AnalyticsInstanceStored{
		Patient: events.AnalyticsPatient{ID: d.PseudonymizeID(patientID)},
		Study: events.AnalyticsStudy{StudyInstanceUID: d.PseudonymizeUID(studyUID), AccessionNumber: d.PseudonymizeID("ACC-2026-77341"),
			Date: got.Study.Date, Time: "111154.812345", RequestedProcedurePriority: "STAT"},
		SeriesInstanceUID: d.PseudonymizeUID(seriesUID), SeriesNumber: 7, Modality: "CT", BodyPartExamined: "HEAD",
		SOPClassUID: uid.CTImageStorage, SOPInstanceUID: d.PseudonymizeUID(sopUID), InstanceNumber: 12, NumberOfFrames: 3,
		TransferSyntaxUID:       uid.ExplicitVRLittleEndian,
		Object:                  events.AnalyticsObject{Backend: "objectstore", Size: 528150, DigestPseudonym: d.PseudonymizeDigest(digest)},
		ReplacesDigestPseudonym: d.PseudonymizeDigest(priorDigest),
		Association: events.AnalyticsAssociation{ID: d.PseudonymizeID("970ff715f3b74955"),
			CallingAE: d.PseudonymizeID("LEAK_CT_SCAN_1"), CalledAE: d.PseudonymizeID("LEAK_ARCHIVE_9")},
		ReceivedAt: got.ReceivedAt,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("projected\n%+v\nwant\n%+v", got, want)
	}

	// Remove: no dates, no times, and a zero event time for the publisher
	// to stamp.
	var removed events.AnalyticsInstanceStored
	e = project(t, projector(t, 1, deid.DateRemove), src, &removed)
	if !e.Time.IsZero() || removed.Study.Date != "" || removed.Study.Time != "" || !removed.ReceivedAt.IsZero() {
		t.Errorf("remove mode kept time %v, date %q, time %q, receipt %v", e.Time, removed.Study.Date, removed.Study.Time, removed.ReceivedAt)
	}
	removed.Study.Date, removed.Study.Time, removed.ReceivedAt = got.Study.Date, got.Study.Time, got.ReceivedAt
	if !reflect.DeepEqual(removed, got) {
		t.Errorf("remove mode differs beyond dates:\n%+v\n%+v", removed, got)
	}
}

func TestProjectStudyConsistentWithInstances(t *testing.T) {
	p := projector(t, 1, deid.DateShift)
	var inst events.AnalyticsInstanceStored
	project(t, p, sampleInstance(t), &inst)
	for _, typ := range []string{events.TypeStudyReceived, events.TypeStudyUpdated} {
		src := sampleStudyEvent(t, typ)
		var got events.AnalyticsStudyReceived
		e := project(t, p, src, &got)
		wantType, wantSubject := events.TypeAnalyticsStudyReceived, "analytics.study.received.CT+SR"
		if typ == events.TypeStudyUpdated {
			wantType, wantSubject = events.TypeAnalyticsStudyUpdated, "analytics.study.updated.CT+SR"
		}
		if e.Type != wantType || e.NATSSubject != wantSubject || e.Subject != inst.Study.StudyInstanceUID {
			t.Errorf("%s: type %s, subject %s, ce-subject %s", typ, e.Type, e.NATSSubject, e.Subject)
		}
		// The same patient, study and series pseudonyms, and the same date
		// offset, as the instance events of the study.
		if got.Patient != inst.Patient || got.Study != inst.Study || got.Series[0].SeriesInstanceUID != inst.SeriesInstanceUID {
			t.Errorf("%s: patient %+v study %+v series %s; the instance event has %+v %+v %s", typ,
				got.Patient, got.Study, got.Series[0].SeriesInstanceUID, inst.Patient, inst.Study, inst.SeriesInstanceUID)
		}
		in := sampleStudyData()
		back := in.FirstReceivedAt.Sub(got.FirstReceivedAt)
		if in.LastReceivedAt.Sub(got.LastReceivedAt) != back || src.Time.Sub(e.Time) != back ||
			in.Series[1].Instances[0].ReceivedAt.Sub(got.Series[1].Instances[0].ReceivedAt) != back ||
			day(t, in.Study.Date).Sub(day(t, got.Study.Date)) != back {
			t.Errorf("%s: timestamps not shifted alike", typ)
		}
		if !reflect.DeepEqual(got.Modalities, []string{"CT", "SR"}) || got.NumSeries != 2 || got.NumInstances != 3 || got.Bytes != 1060621 ||
			got.Trigger != "quiet-period" || got.Generation != 1 || len(got.CallingAEs) != 2 || len(got.Associations) != 2 ||
			got.CalledAEs[0] != inst.Association.CalledAE || got.CallingAEs[0] != inst.Association.CallingAE || got.Associations[0] != inst.Association.ID {
			t.Errorf("%s: study fields %+v", typ, got)
		}
		s := got.Series[1]
		if len(got.Series) != 2 || len(got.Series[0].Instances) != 2 || s.Modality != "SR" || s.BodyPartExamined != "CHEST" ||
			s.SeriesNumber != 2 || s.NumInstances != 1 || s.Bytes != 4321 || s.Instances[0].Object.Size != 4321 ||
			s.Instances[0].SOPClassUID != uid.CTImageStorage || s.Instances[0].Object.Backend != "fs" {
			t.Errorf("%s: series %+v", typ, got.Series)
		}
	}
	// An instance listed by a study event has the pseudonyms of its own
	// event: its UID and its object's digest.
	d := sampleInstanceData()
	d.SOPInstanceUID, d.Object.SHA256 = seriesUID+".12", strings.Repeat("12", 32)
	var own events.AnalyticsInstanceStored
	project(t, p, received(t, events.TypeInstanceStored, "instance/x", time.Now(), d), &own)
	var study events.AnalyticsStudyReceived
	project(t, p, sampleStudyEvent(t, events.TypeStudyReceived), &study)
	if ref := study.Series[0].Instances[1]; ref.SOPInstanceUID != own.SOPInstanceUID || ref.Object.DigestPseudonym != own.Object.DigestPseudonym {
		t.Errorf("instance ref %+v, its instance event %+v", ref, own)
	}
	// A new version names the pseudonym of the digest it replaces.
	d.ReplacesSHA256 = d.Object.SHA256
	d.Object.SHA256 = digest
	var next events.AnalyticsInstanceStored
	project(t, p, received(t, events.TypeInstanceStored, "instance/y", time.Now(), d), &next)
	if next.ReplacesDigestPseudonym != own.Object.DigestPseudonym || next.Object.DigestPseudonym == own.Object.DigestPseudonym {
		t.Errorf("replaces %s, earlier version %s", next.ReplacesDigestPseudonym, own.Object.DigestPseudonym)
	}
}

func TestStableAcrossRestartsAndKeys(t *testing.T) {
	for _, src := range []*events.Received{sampleInstance(t), sampleStudyEvent(t, events.TypeStudyReceived)} {
		first, err := projector(t, 1, deid.DateShift).Project(src)
		if err != nil {
			t.Fatal(err)
		}
		again, err := projector(t, 1, deid.DateShift).Project(src)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := wire(t, first), wire(t, again); !bytes.Equal(a, b) {
			t.Errorf("%s: a restarted projector differs:\n%s\n%s", src.Type, a, b)
		}
		other, err := projector(t, 2, deid.DateShift).Project(src)
		if err != nil {
			t.Fatal(err)
		}
		if other.ID == first.ID || other.Subject == first.Subject {
			t.Errorf("%s: another key gave ID %s, subject %s again", src.Type, other.ID, other.Subject)
		}
	}
}

func TestPatientWithoutID(t *testing.T) {
	p := projector(t, 1, deid.DateShift)
	shift := func(typ string, data any) time.Duration {
		src := received(t, typ, "x", at(2020, 1, 1, 0, 0, 0, 0), data)
		e, err := p.Project(src)
		if err != nil {
			t.Fatal(err)
		}
		return src.Time.Sub(e.Time)
	}
	inst, study := sampleInstanceData(), sampleStudyData()
	inst.Patient.ID, study.Patient.ID = "", ""
	a, b := shift(events.TypeInstanceStored, inst), shift(events.TypeStudyReceived, study)
	if a != b {
		t.Errorf("a study of a patient without ID shifts by %v in one event, %v in another", a, b)
	}
	// Other studies of patients without ID get their own offsets.
	distinct := map[time.Duration]bool{}
	for i := range 20 {
		inst.Study.StudyInstanceUID = studyUID + "." + strconv.Itoa(i+1)
		distinct[shift(events.TypeInstanceStored, inst)] = true
	}
	if len(distinct) < 10 {
		t.Errorf("20 patients without ID share %d offsets", len(distinct))
	}
}

func TestCodesOnly(t *testing.T) {
	p := projector(t, 1, deid.DateRemove)
	d := sampleInstanceData()
	d.Modality, d.BodyPartExamined, d.Study.RequestedProcedurePriority, d.Object.Backend = "ct scan of DOE", "Chest of JANE", "urgent, call DOE", "/srv/doe"
	var got events.AnalyticsInstanceStored
	e := project(t, p, received(t, events.TypeInstanceStored, "i", time.Now(), d), &got)
	if got.Modality != "" || got.BodyPartExamined != "" || got.Study.RequestedProcedurePriority != "" || got.Object.Backend != "" ||
		e.NATSSubject != "analytics.instance.stored._" {
		t.Errorf("free text kept: %+v on %s", got, e.NATSSubject)
	}
	s := sampleStudyData()
	s.Modalities = []string{"CT", "mr of doe", "SR"}
	var study events.AnalyticsStudyReceived
	e = project(t, p, received(t, events.TypeStudyReceived, "s", time.Now(), s), &study)
	if !reflect.DeepEqual(study.Modalities, []string{"CT", "SR"}) || e.NATSSubject != "analytics.study.received.CT+SR" {
		t.Errorf("modalities %v on %s", study.Modalities, e.NATSSubject)
	}
}

func TestProjectErrors(t *testing.T) {
	p := projector(t, 1, deid.DateShift)
	noStudy := sampleInstanceData()
	noStudy.Study.StudyInstanceUID = ""
	noStudyReceived := sampleStudyData()
	noStudyReceived.Study.StudyInstanceUID = ""
	for _, tc := range []struct {
		name string
		ev   *events.Received
		is   error
	}{
		{"other type", &events.Received{ID: sopUID, Type: "org.pacsflow.something.v1", Data: json.RawMessage(`{}`)}, ErrUnsupportedType},
		{"instance without study", received(t, events.TypeInstanceStored, sopUID, time.Now(), noStudy), errNoStudy},
		{"study without study", received(t, events.TypeStudyUpdated, sopUID, time.Now(), noStudyReceived), errNoStudy},
		{"bad instance data", &events.Received{ID: sopUID, Type: events.TypeInstanceStored, Data: json.RawMessage(`{"patient":"` + patientID + `"}`)}, nil},
		{"bad study data", &events.Received{ID: sopUID, Type: events.TypeStudyReceived, Data: json.RawMessage(`[` + patientID)}, nil},
	} {
		e, err := p.Project(tc.ev)
		if err == nil || e != nil || tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%s: %v, %v", tc.name, e, err)
			continue
		}
		// Errors get logged: no value of the event in them.
		if msg := err.Error(); strings.Contains(msg, sopUID) || strings.Contains(msg, "5550123") {
			t.Errorf("%s: error names a value: %s", tc.name, msg)
		}
	}
	if _, err := New(deid.Config{Key: []byte("short")}); err == nil || !strings.Contains(err.Error(), "at least 32 bytes") {
		t.Errorf("a short key: %v", err)
	}
}

func TestAnalyticsStream(t *testing.T) {
	js := natstest.Start(t, natsserver.Config{}).JS
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	phi, err := events.Provision(ctx, js, events.StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var st jetstream.Stream
	for range 2 { // idempotent
		if st, err = events.ProvisionAnalytics(ctx, js, events.StreamConfig{MaxAge: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := events.ProvisionAnalytics(ctx, js, events.StreamConfig{Retention: jetstream.WorkQueuePolicy}); err == nil {
		t.Error("a work-queue analytics stream was provisioned")
	}

	pub := events.NewPublisher(js, "pacsflow/analytics/test")
	for i := range 2 {
		e, err := projector(t, 1, deid.DateRemove).Project(sampleInstance(t)) // a retry after a restart
		if err != nil {
			t.Fatal(err)
		}
		dup, err := pub.Publish(ctx, e)
		if err != nil || dup != (i == 1) {
			t.Fatalf("publish %d: duplicate %v, %v", i, dup, err)
		}
	}
	info, err := st.Info(ctx)
	if err != nil || info.Config.Name != events.AnalyticsStreamName || info.State.Msgs != 1 {
		t.Fatalf("analytics stream: %+v %v", info, err)
	}
	if pi, err := phi.Info(ctx); err != nil || pi.State.Msgs != 0 {
		t.Fatalf("the PHI stream kept an analytics event: %+v %v", pi, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "analytics.instance.stored.CT")
	if err != nil {
		t.Fatal(err)
	}
	r, err := events.Decode(m.Subject, m.Header, m.Data)
	if err != nil || r.Type != events.TypeAnalyticsInstanceStored || r.Source != "pacsflow/analytics/test" || r.Time.IsZero() {
		t.Fatalf("stored %+v %v", r, err)
	}
}
