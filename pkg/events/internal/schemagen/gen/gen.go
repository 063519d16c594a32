// Package gen builds the JSON Schemas (draft 2020-12) of pacsflow's event
// contract from events.Definitions: the Go types give the structure, their
// doc comments the descriptions, and the rules of this package the
// constraints Go types cannot express. The command schemagen writes the
// schemas to schemas/; the tests of package events check that the files
// there are what Files returns.
package gen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/schemas"
)

const draft = "https://json-schema.org/draft/2020-12/schema"

// uidPattern is the syntax of a DICOM UID (PS3.5 §9.1): numeric
// components without leading zeros, separated by dots. With the limit of 64
// characters it accepts what uid.Validate accepts, which ingest applies to
// every UID it keys storage on.
const uidPattern = `^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$`

// formats are the string formats that properties take by naming
// convention (see value) or by override, shared in $defs so that the
// schema names them.
func formats() map[string]map[string]any {
	return map[string]map[string]any{
		"UID": {"type": "string", "pattern": uidPattern, "maxLength": 64,
			"description": "A DICOM UID (PS3.5 §9.1): numeric components without leading zeros, separated by dots; at most 64 characters."},
		"SHA256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
			"description": "A SHA-256 digest in lower-case hexadecimal."},
		"DigestPseudonym": {"type": "string", "pattern": "^[0-9a-f]{32}$",
			"description": "A keyed pseudonym of a SHA-256 digest: 128 bits in lower-case hexadecimal. Equal digests have equal pseudonyms."},
	}
}

// constraints add what the Go types cannot say: closed sets of values and
// bounds that the services guarantee. They are keyed by JSON property
// name, which means the same in every event type (a study event and its
// analytics projection alike); the contract tests hold the events the
// services emit to them. Counts and sizes get their minimum by name too,
// see isCount.
var constraints = map[string]map[string]any{
	"backend":    {"enum": []string{"fs", "objectstore"}},
	"trigger":    {"enum": []string{"max-wait", "quiet-period"}},
	"generation": {"minimum": 1},
	// The model's results.
	"level":             {"enum": []string{"ROUTINE", "STAT", "URGENT"}},
	"machine_generated": {"const": true},
	"box":               {"minItems": 4, "maxItems": 4, "items": map[string]any{"type": "number", "minimum": 0, "maximum": 1}},
	"probability":       {"minimum": 0, "maximum": 1},
	"score":             {"minimum": 0, "maximum": 1},
	"frame":             {"minimum": 1},
	"wait":              {"minimum": 0},
	"decode":            {"minimum": 0},
	"inference":         {"minimum": 0},
	"total":             {"minimum": 0},
	// The generate service.
	"task":      {"enum": []string{"convert", "restore", "synthesize"}},
	"count":     {"minimum": 1, "maximum": 64},
	"synthetic": {"const": true},
	"seed":      {"minimum": 0, "maximum": 1 << 53},
	"objects":   {"minItems": 1},
	// The worklist.
	"change":   {"enum": []string{"added", "findings", "report", "status", "study", "triaged"}},
	"status":   {"enum": []string{"done", "in_review", "new"}},
	"revision": {"minimum": 1},
	// A study event without a new instance is never published.
	"series":    {"minItems": 1},
	"instances": {"minItems": 1},
}

// overrides give a property another format than its name would, by Go type
// and JSON name: the exceptions to the naming convention.
var overrides = map[string]string{
	// Keyed pseudonyms of digests (deid.PseudonymizeDigest): shorter than a
	// SHA-256 on purpose, so as not to pass for one.
	"AnalyticsObject.digest_pseudonym":                  "DigestPseudonym",
	"AnalyticsInstanceStored.replaces_digest_pseudonym": "DigestPseudonym",
}

// isCount tells the integer properties that count or measure, so cannot
// be negative. number_of_frames is not one of them: it is the modality's
// value as parsed, which a malformed instance can make negative.
func isCount(name string) bool {
	return name == "size" || name == "bytes" || strings.HasPrefix(name, "num_")
}

var timeType = reflect.TypeFor[time.Time]()

// Files returns the schema of every event type of the contract, by file
// name (schemas.File), encoded deterministically: sorted keys, two-space
// indentation, a final newline. srcDir is the folder of package events'
// Go source, whose doc comments become descriptions.
func Files(srcDir string) (map[string][]byte, error) {
	docs, err := parseDocs(srcDir)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	out := map[string][]byte{}
	for _, d := range events.Definitions() {
		g := &generator{docs: docs, used: used, defs: map[string]any{}, defTypes: map[string]reflect.Type{}}
		s, err := g.schema(d)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.Type, err)
		}
		name := schemas.File(d.Type)
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("event type %s is defined twice", d.Type)
		}
		if out[name], err = encode(s); err != nil {
			return nil, fmt.Errorf("%s: %w", d.Type, err)
		}
	}
	// A rule for a property that no longer exists would silently stop
	// applying to its successor.
	for key := range constraints {
		if !used[key] {
			return nil, fmt.Errorf("the constraint on %s matches no property of an event type", key)
		}
	}
	for key := range overrides {
		if !used[key] {
			return nil, fmt.Errorf("the override of %s matches no property of an event type", key)
		}
	}
	return out, nil
}

// generator builds the schema of one event type.
type generator struct {
	docs     map[string]typeDocs
	used     map[string]bool         // constraints and overrides applied, over all event types
	defs     map[string]any          // $defs of the schema being built
	defTypes map[string]reflect.Type // the Go type of each struct in defs
}

func (g *generator) schema(d events.Definition) (map[string]any, error) {
	if d.Data.Kind() != reflect.Struct {
		return nil, fmt.Errorf("data type %s is not a struct", d.Data)
	}
	s, err := g.object(d.Data)
	if err != nil {
		return nil, err
	}
	s["$schema"] = draft
	s["$id"] = schemas.ID(d.Type)
	s["title"] = d.Type
	s["description"] = d.Description + " Published on " + d.Subject + "."
	if len(g.defs) > 0 {
		s["$defs"] = g.defs
	}
	return s, nil
}

// object is the schema of a struct: its properties are those encoding/json
// writes, required unless omitted when empty. No other property is allowed:
// see schemas/README.md.
func (g *generator) object(t reflect.Type) (map[string]any, error) {
	props := map[string]any{}
	var required []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		if f.Anonymous {
			return nil, fmt.Errorf("%s.%s: embedded fields are not supported", t.Name(), f.Name)
		}
		name, optional, skip, err := jsonName(f)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", t.Name(), f.Name, err)
		}
		if skip {
			continue
		}
		var p map[string]any
		if format, ok := overrides[t.Name()+"."+name]; ok {
			p = g.format(format)
			g.used[t.Name()+"."+name] = true
		} else if p, err = g.value(f.Type, name); err != nil {
			return nil, fmt.Errorf("%s.%s: %w", t.Name(), f.Name, err)
		}
		if c, ok := constraints[name]; ok {
			maps.Copy(p, c)
			g.used[name] = true
		}
		if d := g.docs[t.Name()].fields[f.Name]; d != "" {
			p["description"] = d
		}
		props[name] = p
		if !optional {
			required = append(required, name)
		}
	}
	sort.Strings(required)
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		s["required"] = required
	}
	return s, nil
}

// jsonName reads a field's json tag as encoding/json does.
func jsonName(f reflect.StructField) (name string, optional, skip bool, err error) {
	tag := f.Tag.Get("json")
	if tag == "-" {
		return "", false, true, nil
	}
	name, opts, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	for opt := range strings.SplitSeq(opts, ",") {
		switch opt {
		case "":
		case "omitempty", "omitzero":
			optional = true
		default:
			return "", false, false, fmt.Errorf("json option %q is not supported", opt)
		}
	}
	return name, optional, false, nil
}

// value is the schema of a value of type t in a property called name
// ("" for array items). The name picks the format of strings (*_uid: a
// UID; sha256, *_sha256: a digest) and the minimum of counts.
func (g *generator) value(t reflect.Type, name string) (map[string]any, error) {
	if t == timeType {
		return map[string]any{"type": "string", "format": "date-time"}, nil
	}
	switch t.Kind() {
	case reflect.String:
		switch {
		case strings.HasSuffix(name, "_uid"):
			return g.format("UID"), nil
		case name == "sha256" || strings.HasSuffix(name, "_sha256"):
			return g.format("SHA256"), nil
		}
		return map[string]any{"type": "string"}, nil
	case reflect.Bool:
		return map[string]any{"type": "boolean"}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		s := map[string]any{"type": "integer"}
		if isCount(name) {
			s["minimum"] = 0
		}
		return s, nil
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}, nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			break // encoding/json writes base64, which no event should carry
		}
		items, err := g.value(t.Elem(), "")
		if err != nil {
			return nil, err
		}
		return map[string]any{"type": "array", "items": items}, nil
	case reflect.Struct:
		return g.ref(t)
	}
	return nil, fmt.Errorf("type %s is not supported", t)
}

func (g *generator) format(name string) map[string]any {
	g.defs[name] = formats()[name]
	return map[string]any{"$ref": "#/$defs/" + name}
}

// ref puts the schema of struct t in $defs, under its Go name, and refers
// to it.
func (g *generator) ref(t reflect.Type) (map[string]any, error) {
	name := t.Name()
	switch prev, seen := g.defTypes[name]; {
	case name == "":
		return nil, fmt.Errorf("anonymous struct types are not supported")
	case formats()[name] != nil:
		return nil, fmt.Errorf("type %s has the name of a string format", t)
	case seen && prev != t:
		return nil, fmt.Errorf("types %s and %s have the same name", prev, t)
	case !seen:
		g.defTypes[name] = t // before recursing, so that a recursive type refers to itself
		s, err := g.object(t)
		if err != nil {
			return nil, err
		}
		if d := g.docs[name].doc; d != "" {
			s["description"] = d
		}
		g.defs[name] = s
	}
	return map[string]any{"$ref": "#/$defs/" + name}, nil
}

func encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	// Descriptions name subjects such as pacs.study.received.<modalities>.
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
