package triage

import (
	"testing"
)

func TestAssess(t *testing.T) {
	p, err := ParsePolicy("nodule=0.5:0.95, fracture=0.4:0.8")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		findings []Finding
		priority string
		want     Result
	}{
		{"nothing", []Finding{{"nodule", 0.1}, {"effusion", 0.2}}, "",
			Result{Routine, 0.2, "no finding reached its URGENT threshold (highest: effusion 0.20)"}},
		{"no findings at all", nil, "ROUTINE", Result{Routine, 0, "no finding reached its URGENT threshold"}},
		{"urgent by its own threshold", []Finding{{"fracture", 0.45}, {"nodule", 0.45}}, "",
			Result{Urgent, 0.45, "fracture 0.45 ≥ URGENT threshold 0.40"}},
		{"stat beats urgent; both named, most probable first", []Finding{{"nodule", 0.6}, {"fracture", 0.85}}, "",
			Result{Stat, 0.85, "fracture 0.85 ≥ STAT threshold 0.80; nodule 0.60 ≥ URGENT threshold 0.50"}},
		{"default threshold for an unnamed label", []Finding{{"effusion", 0.93}}, "",
			Result{Stat, 0.93, "effusion 0.93 ≥ STAT threshold 0.90"}},
		{"DICOM STAT raises a routine study", []Finding{{"nodule", 0.1}}, "stat",
			Result{Stat, 0.1, "requested procedure priority STAT"}},
		{"DICOM HIGH is at least urgent", []Finding{{"nodule", 0.1}}, "HIGH",
			Result{Urgent, 0.1, "requested procedure priority HIGH"}},
		{"DICOM LOW does not lower a finding", []Finding{{"nodule", 0.97}}, "LOW",
			Result{Stat, 0.97, "nodule 0.97 ≥ STAT threshold 0.95"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Assess(tt.findings, tt.priority); got != tt.want {
				t.Errorf("Assess = %+v\nwant     %+v", got, tt.want)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy("*=0.3:2")
	if err != nil || p.Default != (Threshold{0.3, 2}) {
		t.Fatalf("ParsePolicy(*=0.3:2) = %+v, %v", p, err)
	}
	if got := p.Assess([]Finding{{"nodule", 0.99}}, "").Level; got != Urgent {
		t.Errorf("a STAT threshold above 1 reached STAT: %v", got)
	}
	for _, bad := range []string{"nodule", "nodule=0.5", "nodule=a:0.9", "=0.5:0.9", "nodule=0.9:0.5", "nodule=-1:0.5"} {
		if _, err := ParsePolicy(bad); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", bad)
		}
	}
	if l := Stat.String() + Urgent.String() + Routine.String(); l != "STATURGENTROUTINE" {
		t.Errorf("level names %q", l)
	}
}
