package ledger

import (
	"encoding/json"
	"errors"
	"testing"
)

// TestDialogRecordsOutliveTheProcess: a call answered with its dialog
// record and left up when the process stops is settled on the next start,
// and its record is handed back so the SIP side can BYE both legs; once
// forgotten it stays gone. A call ended normally keeps its record until
// forgotten too (its BYEs may not have gone out).
func TestDialogRecordsOutliveTheProcess(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "50.00")
	for _, id := range []string{"up", "ended", "forgotten", "unanswered"} {
		if _, err := l.OpenCall(creditCall(id, "acme", "0.01"), t0); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"up", "ended", "forgotten"} {
		if err := l.AnswerDialog(id, t0, json.RawMessage(`{"leg":"`+id+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.UpdateDialog("up", json.RawMessage(`{"leg":"up","cseq":3}`)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"ended", "forgotten"} {
		if _, err := l.CloseCall(id, CallEnd{At: at(2), Reason: ReasonCallerHangup, SIPStatus: 200}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.ForgetDialog("forgotten"); err != nil {
		t.Fatal(err)
	}
	// After the call ended, its record can no longer be rewritten.
	if err := l.UpdateDialog("ended", json.RawMessage(`{}`)); !errors.Is(err, ErrCallEnded) {
		t.Fatalf("UpdateDialog after the end: %v, want ErrCallEnded", err)
	}
	if len(l.Dialogs()) != 0 {
		t.Fatalf("a running ledger has no dialogs left by a previous run, got %v", l.Dialogs())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir)
	got := map[string]string{}
	for _, d := range l.Dialogs() {
		got[d.Call] = string(d.Data)
	}
	want := map[string]string{"up": `{"leg":"up","cseq":3}`, "ended": `{"leg":"ended"}`}
	if len(got) != len(want) || got["up"] != want["up"] || got["ended"] != want["ended"] {
		t.Fatalf("Dialogs after restart = %v, want %v", got, want)
	}
	if len(l.OpenCalls()) != 0 {
		t.Fatalf("calls left open after restart: %v", l.OpenCalls())
	}
	check(t, l)
	for _, id := range []string{"up", "ended"} {
		if err := l.ForgetDialog(id); err != nil {
			t.Fatal(err)
		}
	}
	if len(l.Dialogs()) != 0 {
		t.Fatalf("Dialogs after forgetting = %v", l.Dialogs())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, dir)
	defer l.Close()
	if len(l.Dialogs()) != 0 {
		t.Fatalf("forgotten dialogs came back: %v", l.Dialogs())
	}
}

func TestDialogRecordRefusals(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	if _, err := l.OpenCall(creditCall("c1", "acme", "0.01"), t0); err != nil {
		t.Fatal(err)
	}
	if err := l.UpdateDialog("c1", json.RawMessage(`{}`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateDialog before answer: %v, want a validation error", err)
	}
	if err := l.AnswerDialog("c1", t0, json.RawMessage(`{not json`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("AnswerDialog with bad JSON: %v, want a validation error", err)
	}
	if c := l.OpenCalls()[0]; c.Answered() {
		t.Fatal("a refused AnswerDialog answered the call")
	}
	if err := l.UpdateDialog("nope", json.RawMessage(`{}`)); !errors.Is(err, ErrUnknownCall) {
		t.Fatalf("UpdateDialog of an unknown call: %v", err)
	}
	if err := l.AnswerDialog("c1", t0, json.RawMessage(`{"ok":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := l.UpdateDialog("c1", json.RawMessage(`[`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateDialog with bad JSON: %v", err)
	}
	check(t, l)
}
