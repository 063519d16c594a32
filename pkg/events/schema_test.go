package events_test

// Tests of the event schemas: schemas/ holds what the generator makes of
// the Go types, the schemas accept and reject what they should, no
// released schema version has changed in a way that breaks its consumers,
// and the examples of docs/events.md follow the contract.

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/events/internal/schemagen/gen"
	"github.com/pacsflow/pacsflow/schemas"
)

const (
	schemaDir   = "../../schemas"
	releasedDir = "../../schemas/released"
	regenerate  = "run `go run ./pkg/events/internal/schemagen` to regenerate schemas/ from the Go types"
)

// TestSchemasAreGenerated: schemas/ holds exactly what the generator makes
// of the Go types now.
func TestSchemasAreGenerated(t *testing.T) {
	want, err := gen.Files(".")
	if err != nil {
		t.Fatal(err)
	}
	have, err := filepath.Glob(filepath.Join(schemaDir, schemas.File("*")))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range have {
		if _, ok := want[filepath.Base(path)]; !ok {
			t.Errorf("schemas/%s is the schema of no event type of events.Definitions: %s", filepath.Base(path), regenerate)
		}
	}
	for name, b := range want {
		got, err := os.ReadFile(filepath.Join(schemaDir, name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			t.Errorf("schemas/%s is missing: %s", name, regenerate)
		case err != nil:
			t.Error(err)
		case !bytes.Equal(got, b):
			t.Errorf("schemas/%s differs from what the Go types make of it (%s): %s", name, firstDifference(got, b), regenerate)
		}
	}
}

// firstDifference describes the lines where the file and the generated
// schema differ, between their common beginning and end.
func firstDifference(file, generated []byte) string {
	a, b := strings.Split(string(file), "\n"), strings.Split(string(generated), "\n")
	pre := 0
	for pre < min(len(a), len(b)) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < min(len(a), len(b))-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	was, now := a[pre:len(a)-suf], b[pre:len(b)-suf]
	switch {
	case len(was) == 0:
		return fmt.Sprintf("at line %d the generator adds %s", pre+1, excerpt(now))
	case len(now) == 0:
		return fmt.Sprintf("at line %d the generator drops %s", pre+1, excerpt(was))
	}
	return fmt.Sprintf("at line %d the file has %s where the generator writes %s", pre+1, excerpt(was), excerpt(now))
}

// excerpt shows a few lines, trimmed.
func excerpt(lines []string) string {
	var out []string
	for i, l := range lines {
		if i == 4 {
			out = append(out, "…")
			break
		}
		out = append(out, strings.TrimSpace(l))
	}
	return strconv.Quote(strings.Join(out, " "))
}

// Values of the examples, as a real study has them.
var (
	receivedAt = time.Date(2026, 11, 27, 5, 30, 8, 527577794, time.UTC)
	studyUID   = "1.2.826.0.1.3680043.8.498.12345678901234567890"
	digest     = "1d4dbfd8c1919be97e02aba680859385f1ee753b9dfcd920774dd17b2b7b2ecd"
)

func object() events.StoredObject {
	return events.StoredObject{Backend: "objectstore", Bucket: "pacsflow-instances", Key: studyUID + "/" + studyUID + ".1/" + studyUID + ".1.1/18ebcfd945ef36dc-081af1a82b2a",
		Size: 528150, SHA256: digest}
}

// instanceStored has every property.
func instanceStored() *events.InstanceStored {
	return &events.InstanceStored{
		Patient: events.Patient{ID: "MRN-0042", Name: "DOE^JANE", BirthDate: "19500704", Sex: "F"},
		Study: events.Study{StudyInstanceUID: studyUID, AccessionNumber: "ACC-2026-0001", StudyID: "0010", Date: "20061219", Time: "111154.812",
			Description: "CT HEAD W/O CONTRAST", ReferringPhysicianName: "Thomas^Albert", RequestedProcedurePriority: "STAT"},
		SeriesInstanceUID: studyUID + ".1", SeriesNumber: 1, SeriesDescription: "AXIAL", Modality: "CT", BodyPartExamined: "HEAD",
		SOPClassUID: "1.2.840.10008.5.1.4.1.1.2", SOPInstanceUID: studyUID + ".1.1", InstanceNumber: 1, NumberOfFrames: 1,
		TransferSyntaxUID: "1.2.840.10008.1.2.1", Object: object(),
		ReplacesSHA256: strings.Repeat("0123456789abcdef", 4),
		Association:    events.Association{ID: "970ff715f3b74955", CallingAE: "CT_SCANNER_1", CalledAE: "PACSFLOW", SourceAddress: "127.0.0.1:57048"},
		ReceivedAt:     receivedAt,
	}
}

// studyReceived has every property.
func studyReceived(generation int, trigger string) *events.StudyReceived {
	in := instanceStored()
	return &events.StudyReceived{
		Patient: in.Patient, Study: in.Study, Modalities: []string{"CT"},
		Series: []events.SeriesManifest{{SeriesInstanceUID: in.SeriesInstanceUID, SeriesNumber: 1, Modality: "CT", Description: "AXIAL", BodyPartExamined: "HEAD",
			NumInstances: 1, Bytes: in.Object.Size, Instances: []events.InstanceRef{{SOPInstanceUID: in.SOPInstanceUID, SOPClassUID: in.SOPClassUID,
				InstanceNumber: 1, NumberOfFrames: 1, TransferSyntaxUID: in.TransferSyntaxUID, Object: in.Object, ReceivedAt: in.ReceivedAt}}}},
		NumSeries: 1, NumInstances: 1, Bytes: in.Object.Size,
		CallingAEs: []string{"CT_SCANNER_1"}, CalledAEs: []string{"PACSFLOW"}, Associations: []string{in.Association.ID},
		FirstReceivedAt: receivedAt, LastReceivedAt: receivedAt, Trigger: trigger, Generation: generation,
	}
}

// AI results of the reference model for one CR image.
func aiModel() events.ModelRef {
	return events.ModelRef{Name: "pacsflow-reference", Version: "1.0.0", ContractVersion: "1",
		IntendedUse: "Reference model trained only on synthetic phantoms. Not for clinical use."}
}

func aiFindingList() []events.Finding {
	return []events.Finding{
		{Label: "nodule", Probability: 0.97, Present: true, Box: []float64{0.2, 0.25, 0.31, 0.36}, SOPInstanceUID: studyUID + ".1.1", Frame: 1},
		{Label: "effusion", Probability: 0.02, Box: []float64{0.6, 0.1, 0.8, 0.4}, SOPInstanceUID: studyUID + ".1.1", Frame: 1},
	}
}

func aiFindings() *events.AIFindings {
	return &events.AIFindings{Study: instanceStored().Study, Generation: 1, Modalities: []string{"CR"}, FirstReceivedAt: receivedAt, Model: aiModel(),
		Findings: aiFindingList(), NumImages: 2,
		Skipped:    []events.SkippedInstance{{SOPInstanceUID: studyUID + ".2.1", Reason: "unsupported image: photometric interpretation \"RGB\" is not greyscale"}},
		Timings:    events.AITimings{Wait: 0.004, Decode: 0.012, Inference: 0.061, Total: 0.08},
		AnalyzedAt: receivedAt}
}

type example struct {
	name string
	data any
}

// validExamples are data that each schema must accept: every property
// present, and only the required ones (of which the Go zero values are
// written).
func validExamples() map[string][]example {
	minimalObject := events.StoredObject{Backend: "fs", Key: "k", SHA256: digest}
	minimalStudy := func(generation int) *events.StudyReceived {
		return &events.StudyReceived{Study: events.Study{StudyInstanceUID: "2.25.1"}, Modalities: []string{},
			Series: []events.SeriesManifest{{SeriesInstanceUID: "2.25.1.1", Instances: []events.InstanceRef{{SOPInstanceUID: "2.25.1.1.1",
				SOPClassUID: "1.2.840.10008.5.1.4.1.1.7", TransferSyntaxUID: "1.2.840.10008.1.2", Object: minimalObject}}}},
			CallingAEs: []string{}, CalledAEs: []string{}, Associations: []string{}, Trigger: "max-wait", Generation: generation}
	}
	analyticsStudy := func(generation int) json.RawMessage {
		return json.RawMessage(`{"patient": {"id": "PSN-7KXQ2M4NB5VLRD3A"},
			"study": {"study_instance_uid": "2.25.245711432876123640372219532386409011771", "accession_number": "PSN-C2HMZ6U4TQ7WJ3YE",
				"date": "20061021", "time": "111154.812", "requested_procedure_priority": "STAT"},
			"modalities": ["CT"],
			"series": [{"series_instance_uid": "2.25.99153405512383418470234712348019012653", "series_number": 1, "modality": "CT",
				"body_part_examined": "HEAD", "num_instances": 1, "bytes": 528150,
				"instances": [{"sop_instance_uid": "2.25.166054733285735190271393475342340102359", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
					"instance_number": 1, "number_of_frames": 1, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
					"object": {"backend": "objectstore", "size": 528150, "digest_pseudonym": "5f0e6ac1b2d94c03a8e71f26d4b9c310"},
					"received_at": "2026-11-20T05:30:08.527577794Z"}]}],
			"num_series": 1, "num_instances": 1, "bytes": 528150,
			"calling_aes": ["PSN-QW4ERT7YUI2OPASD"], "called_aes": ["PSN-ZX3CVB5NM6LKJHGF"], "associations": ["PSN-MN2BV3CX4ZL5KJ6H"],
			"first_received_at": "2026-11-20T05:30:08.527577794Z", "last_received_at": "2026-11-20T05:30:08.527577794Z",
			"trigger": "quiet-period", "generation": ` + strconv.Itoa(generation) + `}`)
	}
	// Dates removed (the default of the projection): no time at all.
	analyticsStudyMinimal := json.RawMessage(`{"patient": {}, "study": {"study_instance_uid": "2.25.1"}, "modalities": [],
		"series": [{"series_instance_uid": "2.25.2", "num_instances": 1, "bytes": 0, "instances": [{"sop_instance_uid": "2.25.3",
			"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7", "transfer_syntax_uid": "1.2.840.10008.1.2",
			"object": {"backend": "fs", "size": 0, "digest_pseudonym": "00000000000000000000000000000000"}}]}],
		"num_series": 1, "num_instances": 1, "bytes": 0, "calling_aes": [], "called_aes": [], "associations": [],
		"trigger": "max-wait", "generation": 1}`)
	return map[string][]example{
		events.TypeAnalyticsInstanceStored: {
			{"every property", json.RawMessage(`{"patient": {"id": "PSN-7KXQ2M4NB5VLRD3A"},
				"study": {"study_instance_uid": "2.25.245711432876123640372219532386409011771", "accession_number": "PSN-C2HMZ6U4TQ7WJ3YE",
					"date": "20061021", "time": "111154.812", "requested_procedure_priority": "STAT"},
				"series_instance_uid": "2.25.99153405512383418470234712348019012653", "series_number": 1, "modality": "CT", "body_part_examined": "HEAD",
				"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "2.25.166054733285735190271393475342340102359",
				"instance_number": 1, "number_of_frames": 1, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
				"object": {"backend": "objectstore", "size": 528150, "digest_pseudonym": "5f0e6ac1b2d94c03a8e71f26d4b9c310"},
				"replaces_digest_pseudonym": "9a3c0e5d7b1f4a2c6e8d0b3f5a7c9e1d",
				"association": {"id": "PSN-MN2BV3CX4ZL5KJ6H", "calling_ae": "PSN-QW4ERT7YUI2OPASD", "called_ae": "PSN-ZX3CVB5NM6LKJHGF"},
				"received_at": "2026-11-20T05:30:08.527577794Z"}`)},
			{"required properties", json.RawMessage(`{"patient": {}, "study": {"study_instance_uid": "2.25.1"}, "series_instance_uid": "2.25.2",
				"sop_class_uid": "1.2", "sop_instance_uid": "2.25.3", "transfer_syntax_uid": "1.2.840.10008.1.2",
				"object": {"backend": "fs", "size": 0, "digest_pseudonym": "00000000000000000000000000000000"},
				"association": {"id": "", "calling_ae": "", "called_ae": ""}}`)},
		},
		events.TypeAnalyticsStudyReceived: {
			{"every property", analyticsStudy(1)},
			{"required properties", analyticsStudyMinimal},
		},
		events.TypeAnalyticsStudyUpdated: {
			{"every property", analyticsStudy(2)},
		},
		events.TypeAIFindings: {
			{"every property", aiFindings()},
			{"required properties", &events.AIFindings{Study: events.Study{StudyInstanceUID: "2.25.1"}, Generation: 1, Modalities: []string{},
				Findings: []events.Finding{}, Skipped: []events.SkippedInstance{}}},
		},
		events.TypeAIReportDraft: {
			{"every property", &events.AIReportDraft{Study: instanceStored().Study, Generation: 2, Modalities: []string{"CR"}, FirstReceivedAt: receivedAt, Model: aiModel(),
				Text: "A nodule is seen in the right upper zone.", MachineGenerated: true, SOPInstanceUID: studyUID + ".1.1", Frame: 1,
				Findings: aiFindingList()}},
		},
		events.TypeAITriage: {
			{"every property", &events.AITriage{Study: instanceStored().Study, Generation: 1, Modalities: []string{"CR"}, FirstReceivedAt: receivedAt, Model: aiModel(),
				Level: "STAT", Score: 0.97, Reason: "nodule 0.97 ≥ STAT threshold 0.90"}},
		},
		events.TypeWorklistUpdated: {
			{"every property", &events.WorklistUpdated{StudyInstanceUID: studyUID, Change: events.WorklistTriaged, Revision: 7, Generation: 1,
				Level: "STAT", Score: 0.97, Status: "in_review", Modalities: []string{"CR", "DX"}, FirstReceivedAt: receivedAt}},
			{"pending", &events.WorklistUpdated{StudyInstanceUID: "2.25.1", Change: events.WorklistAdded, Revision: 1, Generation: 1,
				Level: "ROUTINE", Pending: true, Status: "new", Modalities: []string{}}},
		},
		events.TypeAugmentationRequested: {
			{"every property", &events.AugmentationRequested{RequestID: "req-1", StudyInstanceUID: studyUID, SOPInstanceUID: studyUID + ".1.1",
				Task: "restore", Prompt: "nodule", Count: 4, Seed: 7, RequestedBy: "cli", RequestedAt: receivedAt}},
			{"required properties", &events.AugmentationRequested{RequestID: "r", StudyInstanceUID: "2.25.1", Task: "synthesize", Count: 1}},
		},
		events.TypeAugmentationGenerated: {
			{"every property", &events.AugmentationGenerated{RequestID: "req-1", Task: "restore", Prompt: "nodule",
				SourceStudyInstanceUID: studyUID, SourceSOPInstanceUID: studyUID + ".1.1", StudyInstanceUID: "2.25.42",
				Objects: []events.GeneratedObject{{SOPInstanceUID: "2.25.42.1.1", SeriesInstanceUID: "2.25.42.1", Seed: 7,
					Object: events.StoredObject{Backend: "objectstore", Bucket: "pacsflow-instances", Key: "2.25.42/2.25.42.1/2.25.42.1.1.v1", Size: 9000, SHA256: digest}}},
				Model: aiModel(), Synthetic: true, GeneratedAt: receivedAt}},
		},
		events.TypeInstanceStored: {
			{"every property", instanceStored()},
			{"required properties", &events.InstanceStored{Study: events.Study{StudyInstanceUID: "0"}, SeriesInstanceUID: "0.0", SOPClassUID: "1.2",
				SOPInstanceUID: "2.25.0", TransferSyntaxUID: "1.2.840.10008.1.2", Object: minimalObject}},
		},
		events.TypeStudyReceived: {
			{"every property", studyReceived(1, "quiet-period")},
			{"required properties", minimalStudy(1)},
		},
		events.TypeStudyUpdated: {
			{"every property", studyReceived(2, "quiet-period")},
			{"required properties", minimalStudy(3)},
		},
	}
}

// remove is the value of a mutation that deletes what the path names.
type remove struct{}

// mutate sets the value at path, a JSON Pointer without its leading
// slash, in the JSON document doc (or deletes it, for remove{}), and
// returns the new document.
func mutate(t *testing.T, doc []byte, path string, v any) []byte {
	t.Helper()
	var root any
	if err := json.Unmarshal(doc, &root); err != nil {
		t.Fatal(err)
	}
	toks := strings.Split(path, "/")
	parent := root
	for _, tok := range toks[:len(toks)-1] {
		switch p := parent.(type) {
		case map[string]any:
			parent = p[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i >= len(p) {
				t.Fatalf("no %s in the document", path)
			}
			parent = p[i]
		}
	}
	last := toks[len(toks)-1]
	switch p := parent.(type) {
	case map[string]any:
		if _, del := v.(remove); !del {
			p[last] = v
		} else if _, ok := p[last]; ok {
			delete(p, last)
		} else {
			t.Fatalf("no %s in the document to remove", path)
		}
	case []any:
		i, err := strconv.Atoi(last)
		if err != nil || i >= len(p) {
			t.Fatalf("no %s in the document", path)
		}
		p[i] = v
	default:
		t.Fatalf("no %s in the document", path)
	}
	b, err := json.Marshal(root)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func marshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestValidateDataAcceptsValid(t *testing.T) {
	examples := validExamples()
	for _, d := range events.Definitions() {
		if len(examples[d.Type]) == 0 {
			t.Errorf("no valid example of %s: add one to validExamples", d.Type)
		}
		for _, ex := range examples[d.Type] {
			if err := events.ValidateData(d.Type, marshal(t, ex.data)); err != nil {
				t.Errorf("%s, %s: %v", d.Type, ex.name, err)
			}
		}
	}
}

// TestValidateDataRejectsInvalid: each case changes one value of a valid
// example; the schema rejects it, and the error names the value's JSON
// Pointer and what is wrong.
func TestValidateDataRejectsInvalid(t *testing.T) {
	type invalid struct {
		name     string
		path     string // what the mutation changes
		value    any
		wantPath string // where the violation is reported
		wantMsg  string
	}
	instance := []invalid{
		{"missing required property", "sop_instance_uid", remove{}, "", "missing property 'sop_instance_uid'"},
		{"missing required nested property", "object/sha256", remove{}, "/object", "missing property 'sha256'"},
		{"missing required object", "association", remove{}, "", "missing property 'association'"},
		{"string for an integer", "series_number", "2", "/series_number", "want integer"},
		{"fraction for an integer", "instance_number", 1.5, "/instance_number", "want integer"},
		{"null for an object", "patient", nil, "/patient", "got null, want object"},
		{"number for a string", "patient/name", 7, "/patient/name", "want string"},
		{"UID with a leading zero", "sop_instance_uid", "1.2.03", "/sop_instance_uid", "does not match pattern"},
		{"UID with letters", "study/study_instance_uid", "1.2.abc", "/study/study_instance_uid", "does not match pattern"},
		{"UID with an empty component", "series_instance_uid", "1..2", "/series_instance_uid", "does not match pattern"},
		{"empty UID", "sop_class_uid", "", "/sop_class_uid", "does not match pattern"},
		{"UID of 65 characters", "transfer_syntax_uid", "1." + strings.Repeat("2", 63), "/transfer_syntax_uid", "maxLength"},
		{"upper-case sha256", "object/sha256", strings.ToUpper(digest), "/object/sha256", "does not match pattern"},
		{"short sha256", "replaces_sha256", digest[:63], "/replaces_sha256", "does not match pattern"},
		{"unknown property", "station_name", "CT1", "", "additional properties 'station_name' not allowed"},
		{"unknown nested property", "object/url", "https://x", "/object", "additional properties 'url' not allowed"},
		{"backend not in the enum", "object/backend", "s3", "/object/backend", "value must be one of 'fs', 'objectstore'"},
		{"negative size", "object/size", -1, "/object/size", "minimum"},
		{"time without a zone", "received_at", "2026-11-27T05:30:08", "/received_at", "not valid date-time"},
		{"time not RFC 3339", "received_at", "27 Nov 2026 05:30", "/received_at", "not valid date-time"},
	}
	study := []invalid{
		{"trigger not in the enum", "trigger", "timeout", "/trigger", "value must be one of 'max-wait', 'quiet-period'"},
		{"generation 0", "generation", 0, "/generation", "minimum"},
		{"no series", "series", []any{}, "/series", "minItems"},
		{"series without instances", "series/0/instances", []any{}, "/series/0/instances", "minItems"},
		{"null for an array", "modalities", nil, "/modalities", "got null, want array"},
		{"number in a string array", "calling_aes/0", 1, "/calling_aes/0", "want string"},
		{"negative count", "num_instances", -1, "/num_instances", "minimum"},
		{"negative series bytes", "series/0/bytes", -5, "/series/0/bytes", "minimum"},
		{"bad UID deep inside", "series/0/instances/0/sop_instance_uid", "1.2.x", "/series/0/instances/0/sop_instance_uid", "does not match pattern"},
		{"bad sha256 deep inside", "series/0/instances/0/object/sha256", "xyz", "/series/0/instances/0/object/sha256", "does not match pattern"},
		{"unknown property of a series", "series/0/frame_of_reference_uid", "1.2", "/series/0", "additional properties 'frame_of_reference_uid' not allowed"},
		{"missing required property of an instance", "series/0/instances/0/received_at", remove{}, "/series/0/instances/0", "missing property 'received_at'"},
		{"time not RFC 3339", "last_received_at", "yesterday", "/last_received_at", "not valid date-time"},
	}
	// The analytics schemas keep PHI out: a property the projection drops
	// is unknown to them.
	analyticsInstance := []invalid{
		{"patient name", "patient/name", "DOE^JANE", "/patient", "additional properties 'name' not allowed"},
		{"object key", "object/key", "1.2.3/1.2.3.4", "/object", "additional properties 'key' not allowed"},
		{"source address", "association/source_address", "10.0.0.7:4100", "/association", "additional properties 'source_address' not allowed"},
		{"a SHA-256 for its pseudonym", "object/digest_pseudonym", digest, "/object/digest_pseudonym", "does not match pattern"},
		{"missing required property", "sop_instance_uid", remove{}, "", "missing property 'sop_instance_uid'"},
	}
	analyticsStudy := []invalid{
		{"patient name", "patient/name", "DOE^JANE", "/patient", "additional properties 'name' not allowed"},
		{"series description", "series/0/description", "AXIAL", "/series/0", "additional properties 'description' not allowed"},
		{"a SHA-256 for its pseudonym", "series/0/instances/0/object/digest_pseudonym", digest, "/series/0/instances/0/object/digest_pseudonym", "does not match pattern"},
		{"trigger not in the enum", "trigger", "timeout", "/trigger", "value must be one of"},
	}
	aiFindingsInvalid := []invalid{
		{"probability above 1", "findings/0/probability", 1.2, "/findings/0/probability", "maximum"},
		{"box of three numbers", "findings/0/box", []any{0.1, 0.2, 0.3}, "/findings/0/box", "minItems"},
		{"box outside the image", "findings/0/box/2", 1.5, "/findings/0/box/2", "maximum"},
		{"frame 0", "findings/0/frame", 0, "/findings/0/frame", "minimum"},
		{"negative timing", "timings/inference", -0.1, "/timings/inference", "minimum"},
		{"missing model", "model", remove{}, "", "missing property 'model'"},
		{"generation 0", "generation", 0, "/generation", "minimum"},
	}
	aiReportInvalid := []invalid{
		{"not machine-generated", "machine_generated", false, "/machine_generated", "value must be true"},
		{"missing text", "text", remove{}, "", "missing property 'text'"},
	}
	aiTriageInvalid := []invalid{
		{"level not in the enum", "level", "EMERGENCY", "/level", "value must be one of 'ROUTINE', 'STAT', 'URGENT'"},
		{"score below 0", "score", -0.5, "/score", "minimum"},
		{"missing reason", "reason", remove{}, "", "missing property 'reason'"},
	}
	augmentationRequestedInvalid := []invalid{
		{"unknown task", "task", "colourize", "/task", "value must be one of 'convert', 'restore', 'synthesize'"},
		{"count 0", "count", 0, "/count", "minimum"},
		{"negative seed", "seed", -1, "/seed", "minimum"},
		{"missing study", "study_instance_uid", remove{}, "", "missing property 'study_instance_uid'"},
	}
	augmentationGeneratedInvalid := []invalid{
		{"not synthetic", "synthetic", false, "/synthetic", "value must be true"},
		{"no objects", "objects", []any{}, "/objects", "minItems"},
		{"missing model", "model", remove{}, "", "missing property 'model'"},
	}
	worklistInvalid := []invalid{
		{"unknown change", "change", "moved", "/change", "value must be one of"},
		{"unknown status", "status", "read", "/status", "value must be one of 'done', 'in_review', 'new'"},
		{"revision 0", "revision", 0, "/revision", "minimum"},
		{"patient name", "patient", map[string]any{"name": "DOE^JANE"}, "", "additional properties 'patient' not allowed"},
	}
	cases := map[string][]invalid{
		events.TypeWorklistUpdated:         worklistInvalid,
		events.TypeAugmentationRequested:   augmentationRequestedInvalid,
		events.TypeAugmentationGenerated:   augmentationGeneratedInvalid,
		events.TypeInstanceStored:          instance,
		events.TypeStudyReceived:           study,
		events.TypeStudyUpdated:            study,
		events.TypeAIFindings:              aiFindingsInvalid,
		events.TypeAIReportDraft:           aiReportInvalid,
		events.TypeAITriage:                aiTriageInvalid,
		events.TypeAnalyticsInstanceStored: analyticsInstance,
		events.TypeAnalyticsStudyReceived:  analyticsStudy,
		events.TypeAnalyticsStudyUpdated:   analyticsStudy,
	}
	valid := validExamples()
	for _, d := range events.Definitions() {
		if len(cases[d.Type]) == 0 {
			t.Errorf("no invalid data for %s: add cases", d.Type)
		}
		base := marshal(t, valid[d.Type][0].data)
		for _, c := range cases[d.Type] {
			t.Run(d.Type+"/"+c.name, func(t *testing.T) {
				err := events.ValidateData(d.Type, mutate(t, base, c.path, c.value))
				var se *events.SchemaError
				if !errors.As(err, &se) {
					t.Fatalf("error %v, want a *events.SchemaError", err)
				}
				found := slices.ContainsFunc(se.Violations, func(v events.Violation) bool {
					return v.Path == c.wantPath && strings.Contains(v.Message, c.wantMsg)
				})
				if !found || se.Type != d.Type || !strings.Contains(err.Error(), c.wantMsg) {
					t.Fatalf("error %q, want one at %q saying %q", err, c.wantPath, c.wantMsg)
				}
			})
		}
	}
	if err := events.ValidateData("org.pacsflow.nothing.v1", []byte(`{}`)); err == nil {
		t.Error("data of an unknown type validated")
	}
	if err := events.ValidateData(events.TypeInstanceStored, []byte(`{"patient": {}`)); err == nil {
		t.Error("truncated JSON validated")
	}
}

// validMessage is the message of a valid pacs.instance.stored event.
func validMessage(t *testing.T) *nats.Msg {
	t.Helper()
	d := instanceStored()
	m, err := (&events.Event{ID: "instance/" + d.SOPInstanceUID + "/" + d.Object.SHA256, Type: events.TypeInstanceStored,
		Source: "pacsflow/ingest/test", Subject: d.Study.StudyInstanceUID, Time: receivedAt,
		NATSSubject: events.InstanceStoredSubject(d.Modality, d.Association.CalledAE), Data: d}).Message()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestValidateMessage(t *testing.T) {
	if m := validMessage(t); events.ValidateMessage(m.Subject, m.Header, m.Data) != nil {
		t.Fatalf("a valid message: %v", events.ValidateMessage(m.Subject, m.Header, m.Data))
	}
	for _, c := range []struct {
		name   string
		change func(m *nats.Msg)
		want   string
	}{
		{"not CloudEvents 1.0", func(m *nats.Msg) { m.Header.Set("ce-specversion", "0.3") }, `ce-specversion is "0.3"`},
		{"no id", func(m *nats.Msg) { m.Header.Del("ce-id"); m.Header.Del(nats.MsgIdHdr) }, "ce-id is missing"},
		{"no source", func(m *nats.Msg) { m.Header.Del("ce-source") }, "ce-source is missing"},
		{"no type", func(m *nats.Msg) { m.Header.Del("ce-type") }, "ce-type is missing"},
		{"no time", func(m *nats.Msg) { m.Header.Del("ce-time") }, "ce-time is missing"},
		{"time not RFC 3339", func(m *nats.Msg) { m.Header.Set("ce-time", "2026-11-27 05:30:08") }, "not an RFC 3339 time"},
		{"not JSON", func(m *nats.Msg) { m.Header.Set("content-type", "application/octet-stream") }, "content-type is"},
		{"de-duplication ID differs", func(m *nats.Msg) { m.Header.Set(nats.MsgIdHdr, "other") }, `Nats-Msg-Id "other" differs from ce-id`},
		{"subject of another type", func(m *nats.Msg) { m.Subject = "pacs.study.received.CT.PACSFLOW" }, "is not of the form pacs.instance.stored.<modality>.<called AE>"},
		{"subject without the AE", func(m *nats.Msg) { m.Subject = "pacs.instance.stored.CT" }, "is not of the form"},
		{"subject token not made safe", func(m *nats.Msg) { m.Subject = "pacs.instance.stored.CT.ARCHIVE*1" }, "is not of the form"},
		{"ce-subject not the study", func(m *nats.Msg) { m.Header.Set("ce-subject", "1.2.3") }, `ce-subject "1.2.3" is not the data's study_instance_uid`},
		{"no ce-subject", func(m *nats.Msg) { m.Header.Del("ce-subject") }, `ce-subject "" is not the data's study_instance_uid`},
		{"unknown type", func(m *nats.Msg) { m.Header.Set("ce-type", "org.pacsflow.instance.stored.v9") }, "not one of the contract's types"},
		{"invalid data", func(m *nats.Msg) { m.Data = mutate(t, m.Data, "object/backend", "s3") }, "at /object/backend: value must be one of"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := validMessage(t)
			c.change(m)
			err := events.ValidateMessage(m.Subject, m.Header, m.Data)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %q", err, c.want)
			}
		})
	}
	m := validMessage(t)
	m.Data = mutate(t, m.Data, "size", "big")
	var se *events.SchemaError
	if err := events.ValidateMessage(m.Subject, m.Header, m.Data); !errors.As(err, &se) {
		t.Errorf("invalid data: %v, want a *events.SchemaError within", err)
	}
}

// TestDocsExamples: the example events of docs/events.md, headers and
// data, follow the contract.
func TestDocsExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	// A block of headers is followed by a block of JSON data.
	blocks := regexp.MustCompile("(?s)```\n(subject: .*?)```\n```json\n(.*?)```").FindAllSubmatch(doc, -1)
	seen := map[string]bool{}
	for _, b := range blocks {
		var subject string
		h := nats.Header{}
		for line := range strings.SplitSeq(strings.TrimSpace(string(b[1])), "\n") {
			k, v, _ := strings.Cut(line, ": ")
			if k == "subject" {
				subject = v
			} else {
				h.Set(k, v)
			}
		}
		if err := events.ValidateMessage(subject, h, b[2]); err != nil {
			t.Errorf("docs/events.md: the example of %s: %v", h.Get("ce-type"), err)
		}
		seen[h.Get("ce-type")] = true
	}
	for _, typ := range []string{events.TypeInstanceStored, events.TypeStudyReceived, events.TypeAIFindings, events.TypeAITriage, events.TypeWorklistUpdated} {
		if !seen[typ] {
			t.Errorf("docs/events.md has no example of %s (a block of headers starting with `subject:`, then a block of JSON)", typ)
		}
	}
}

// compatibilityRule explains the failures of TestReleasedSchemasCompatible.
const compatibilityRule = `A released schema version is a contract: consumers validate strictly against it
(additionalProperties is false) and replay old events from the stream. Within a type version only
annotations (title, description, $comment, examples, deprecated, default) and the names of $defs
may change;
anything that changes which data is valid breaks it: a property added, removed, made required or
optional, a type, enum, pattern, format or bound changed. Restore the change for this version, and
make it in a new type version (….v2) with its own Definition and schema, emitted alongside the old
one until its consumers have moved. Never edit schemas/released/. See schemas/README.md.`

// TestReleasedSchemasCompatible: for every schema in schemas/released/,
// the current schema of its type exists and accepts exactly the same data.
func TestReleasedSchemasCompatible(t *testing.T) {
	released, err := filepath.Glob(filepath.Join(releasedDir, schemas.File("*")))
	if err != nil {
		t.Fatal(err)
	}
	if len(released) == 0 {
		t.Fatal("schemas/released/ is empty: it must keep a copy of every released schema version, v1 at least")
	}
	examples := validExamples()
	broken := false
	defer func() {
		if broken {
			t.Log(compatibilityRule)
		}
	}()
	for _, path := range released {
		name := filepath.Base(path)
		typ := strings.TrimSuffix(name, schemas.File(""))
		old := readSchema(t, path)
		if old["$id"] != schemas.ID(typ) {
			t.Errorf("released/%s has $id %v, want %s: the file is not the schema of %s", name, old["$id"], schemas.ID(typ), typ)
			continue
		}
		curPath := filepath.Join(schemaDir, name)
		if _, err := os.Stat(curPath); err != nil {
			t.Errorf("%s was released but is no longer generated (%v): a released event type stays in events.Definitions until it is retired", typ, err)
			broken = true
			continue
		}
		problems, err := incompatibilities(old, readSchema(t, curPath))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(problems) > 0 {
			t.Errorf("schemas/%s breaks the released version in schemas/released/:\n  %s", name, strings.Join(problems, "\n  "))
			broken = true
		}
		// The examples the current schema accepts, the released one accepts.
		sch := compileFile(t, path)
		for _, ex := range examples[typ] {
			v, err := jsonschema.UnmarshalJSON(bytes.NewReader(marshal(t, ex.data)))
			if err != nil {
				t.Fatal(err)
			}
			if err := sch.Validate(v); err != nil {
				t.Errorf("released/%s rejects the example %q that the current schema accepts: %v", name, ex.name, err)
				broken = true
			}
		}
	}
}

func readSchema(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return readSchemaBytes(t, b)
}

// compileFile compiles a schema file on its own, since a released schema
// has the $id of the current one.
func compileFile(t *testing.T, path string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	s, err := c.Compile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

// TestCompatibilityCheck: the check of TestReleasedSchemasCompatible finds
// each kind of breaking change, and lets annotations and $defs names
// change.
func TestCompatibilityCheck(t *testing.T) {
	cur, err := os.ReadFile(filepath.Join(schemaDir, schemas.File(events.TypeInstanceStored)))
	if err != nil {
		t.Fatal(err)
	}
	renamed := strings.ReplaceAll(string(cur), "StoredObject", "ObjectLocation")
	for _, c := range []struct {
		name  string
		path  string
		value any
		want  string // "" when compatible
	}{
		{"description changed", "properties/replaces_sha256/description", "Set for a new version.", ""},
		{"title changed", "$defs/Patient/title", "Patient", ""},
		{"property removed", "properties/modality", remove{}, `/modality: property removed`},
		{"property added", "properties/station_name", map[string]any{"type": "string"}, `/station_name: property added`},
		{"type changed", "properties/series_number/type", "string", `/series_number: type changed from "integer" to "string"`},
		{"property made required", "required", []any{"association", "modality", "object", "patient", "received_at", "series_instance_uid", "sop_class_uid", "sop_instance_uid", "study", "transfer_syntax_uid"}, `/modality: property made required`},
		{"property made optional", "$defs/StoredObject/required", []any{"backend", "key", "sha256"}, `/object/size: property made optional`},
		{"enum value removed", "$defs/StoredObject/properties/backend/enum", []any{"fs"}, `/object/backend: enum value "objectstore" removed`},
		{"enum value added", "$defs/StoredObject/properties/backend/enum", []any{"fs", "objectstore", "s3"}, `/object/backend: enum value "s3" added`},
		{"pattern changed", "$defs/UID/pattern", "^[0-9.]+$", `/study/study_instance_uid: pattern changed`},
		{"format changed", "properties/received_at/format", "date", `/received_at: format changed from "date-time" to "date"`},
		{"format removed", "properties/received_at/format", remove{}, `/received_at: format removed`},
		{"bound added", "properties/instance_number/minimum", 1, `/instance_number: minimum added`},
		{"additional properties allowed", "$defs/Patient/additionalProperties", true, `/patient: additionalProperties changed from false to true`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var changed map[string]any
			if err := json.Unmarshal(mutate(t, cur, c.path, c.value), &changed); err != nil {
				t.Fatal(err)
			}
			problems, err := incompatibilities(readSchemaBytes(t, cur), changed)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.want == "" && len(problems) > 0:
				t.Fatalf("a compatible change reported: %q", problems)
			case c.want != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, c.want) }):
				t.Fatalf("reported %q, want %q", problems, c.want)
			}
		})
	}
	problems, err := incompatibilities(readSchemaBytes(t, cur), readSchemaBytes(t, []byte(renamed)))
	if err != nil || len(problems) > 0 {
		t.Errorf("renaming a $defs entry: %q %v", problems, err)
	}
}

func readSchemaBytes(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// annotations are the keywords that do not decide whether data is valid.
var annotations = map[string]bool{"title": true, "description": true, "$comment": true, "examples": true, "deprecated": true, "default": true}

// incompatibilities lists how schema cur accepts other data than schema
// old, where both are schemas of pacsflow's kind: objects whose $refs
// point into their own $defs.
func incompatibilities(old, cur map[string]any) ([]string, error) {
	a, err := validity(old, old, 0)
	if err != nil {
		return nil, fmt.Errorf("released schema: %w", err)
	}
	b, err := validity(cur, cur, 0)
	if err != nil {
		return nil, fmt.Errorf("current schema: %w", err)
	}
	var out []string
	compare("", a, b, &out)
	return out, nil
}

// validity is what decides the validity of data in schema s of the
// document root: s without annotations and $defs, with the schema each
// local $ref points to in place of the reference.
func validity(root map[string]any, s any, depth int) (any, error) {
	if depth > 32 {
		return nil, errors.New("$ref nested too deep: a recursive schema is beyond this check")
	}
	obj, ok := s.(map[string]any)
	if !ok {
		return s, nil // true or false
	}
	out := map[string]any{}
	for k, v := range obj {
		var err error
		switch {
		case annotations[k] || k == "$defs":
			continue
		case k == "$ref":
			ref, _ := v.(string)
			target, ok := pointer(root, ref)
			if !ok {
				return nil, fmt.Errorf("$ref %v does not point into the schema itself", v)
			}
			out[k], err = validity(root, target, depth+1)
		case k == "properties" || k == "patternProperties" || k == "dependentSchemas":
			props := map[string]any{}
			for name, p := range v.(map[string]any) {
				if props[name], err = validity(root, p, depth+1); err != nil {
					return nil, err
				}
			}
			out[k] = props
		case k == "allOf" || k == "anyOf" || k == "oneOf" || k == "prefixItems":
			var list []any
			for _, p := range v.([]any) {
				p, err := validity(root, p, depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, p)
			}
			out[k] = list
		case slices.Contains([]string{"items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames", "unevaluatedItems", "unevaluatedProperties"}, k):
			out[k], err = validity(root, v, depth+1)
		default:
			out[k] = v
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// pointer resolves a reference of the form #/a/b within root.
func pointer(root map[string]any, ref string) (any, bool) {
	path, ok := strings.CutPrefix(ref, "#")
	if !ok {
		return nil, false
	}
	var v any = root
	for tok := range strings.SplitSeq(strings.TrimPrefix(path, "/"), "/") {
		if tok == "" {
			continue
		}
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[tok]; !ok {
			return nil, false
		}
	}
	return v, true
}

// compare reports the differences between the validity of two schemas at
// the data path where (properties by name, array items as *).
func compare(where string, old, cur any, out *[]string) {
	at := cmp.Or(where, "(top level)")
	o, ok1 := old.(map[string]any)
	c, ok2 := cur.(map[string]any)
	if !ok1 || !ok2 {
		if !reflect.DeepEqual(old, cur) {
			*out = append(*out, fmt.Sprintf("%s: schema changed from %s to %s", at, js(old), js(cur)))
		}
		return
	}
	for _, k := range sortedKeys(o, c) {
		ov, inOld := o[k]
		cv, inCur := c[k]
		switch {
		case k == "properties":
			op, _ := ov.(map[string]any)
			cp, _ := cv.(map[string]any)
			for _, name := range sortedKeys(op, cp) {
				p, q := op[name], cp[name]
				switch {
				case q == nil:
					*out = append(*out, fmt.Sprintf("%s/%s: property removed", where, name))
				case p == nil:
					*out = append(*out, fmt.Sprintf("%s/%s: property added", where, name))
				default:
					compare(where+"/"+name, p, q, out)
				}
			}
		case k == "required" || k == "enum":
			before, after := listOf(ov), listOf(cv)
			for _, v := range before {
				if !slices.Contains(after, v) {
					*out = append(*out, setChange(where, k, v, "removed"))
				}
			}
			for _, v := range after {
				if !slices.Contains(before, v) {
					*out = append(*out, setChange(where, k, v, "added"))
				}
			}
		case k == "$ref":
			compare(where, ov, cv, out)
		case k == "items":
			compare(where+"/*", ov, cv, out)
		case !inCur:
			*out = append(*out, fmt.Sprintf("%s: %s removed (was %s)", at, k, js(ov)))
		case !inOld:
			*out = append(*out, fmt.Sprintf("%s: %s added (%s)", at, k, js(cv)))
		case !reflect.DeepEqual(ov, cv):
			*out = append(*out, fmt.Sprintf("%s: %s changed from %s to %s", at, k, js(ov), js(cv)))
		}
	}
}

func setChange(where, keyword string, v any, change string) string {
	if keyword == "required" {
		if change == "removed" {
			return fmt.Sprintf("%s/%v: property made optional", where, v)
		}
		return fmt.Sprintf("%s/%v: property made required", where, v)
	}
	return fmt.Sprintf("%s: enum value %s %s", cmp.Or(where, "(top level)"), js(v), change)
}

func listOf(v any) []any {
	l, _ := v.([]any)
	return l
}

func sortedKeys(ms ...map[string]any) []string {
	var keys []string
	for _, m := range ms {
		for k := range m {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
