package events

import "testing"

func TestAITriageSubject(t *testing.T) {
	got := AITriageSubject(TriageStat, []string{"DX", "CR"}, "ER ARCHIVE")
	if want := "ai.triage.STAT.CR+DX.ER_ARCHIVE"; got != want {
		t.Errorf("AITriageSubject = %q, want %q", got, want)
	}
}
