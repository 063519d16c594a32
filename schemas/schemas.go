// Package schemas holds the JSON Schemas (draft 2020-12) of the data of
// pacsflow's events: one file per event type, <type>.schema.json, generated
// from the Go types of package events by
//
//	go run ./pkg/events/internal/schemagen
//
// The folder released/ keeps a frozen copy of every released schema
// version; README.md states the compatibility policy that tests enforce
// against it.
package schemas

import "embed"

// FS holds the current schema of every event type, named by File, at its
// root. Package events validates against these.
//
//go:embed *.schema.json
var FS embed.FS

// File is the name of the schema file of an event type.
func File(eventType string) string { return eventType + ".schema.json" }

// ID is the $id of the schema of an event type: a name, not a location,
// so that it stays valid wherever the files are published.
func ID(eventType string) string { return "urn:pacsflow:schema:" + eventType }

// NotifyOpenAPI is the OpenAPI 3.1 description of the notify service's
// JSON API, which the service serves at /api/v1/openapi.json.
//
//go:embed notify.openapi.json
var NotifyOpenAPI []byte
