package gateway

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestRefusalTableMatchesREADME ties the SIP statuses the gateway refuses
// with to the README's table of them (section "How a call is decided and
// billed", the `| status | when |` table), both ways: a status the gateway
// can send for a refusal that the table does not list fails, and so does a
// status the table lists that nothing sends.
//
// "Can send for a refusal" means a final response the gateway itself
// decides to give a request instead of taking it further:
//
//   - every row of refusals (refusal.go), the typed refusal reasons;
//   - the request checks: every badRequest{status, …} literal, the
//     stateless "SIP/2.0 NNN …" of answerUnparsable, and every status
//     written as a literal in sip.NewResponseFromRequest(req, NNN, …) or
//     X.Respond(NNN, …) in the package's code (the missing-header 400, the
//     method check's 405/501, the 503 when every carrier failed or billing
//     could not start).
//
// Not counted, because they are no refusal of a request by the gateway:
// 1xx and 2xx; 500 (a bug: internalRefusal or a contained panic); the
// answers inside a dialog (481 no such dialog, 491 a re-INVITE already
// pending, 408 a re-INVITE the carrier did not answer); and whatever the
// carrier decides and the gateway relays before the answer (its 4xx–6xx,
// 408 when it stays silent, 502 for its own challenge, 487 after a CANCEL),
// which are not literals in a Respond call.
//
// The scan reads the source, so it follows the code when files are split;
// a status written as a named constant instead of a literal would escape
// it, which the sanity checks below catch for the forms used today.
func TestRefusalTableMatchesREADME(t *testing.T) {
	documented, phrases := readmeRefusalStatuses(t)

	sent := map[int]string{} // status -> where it is sent from
	for _, x := range refusals {
		if x.r.warning == "" {
			t.Errorf("refusal %q has no Warning text; the README says every refusal carries one", x.r.reason)
		}
		sent[x.r.status] = "refusals: " + x.r.reason
		// The README names a status's phrase where it gives one; the
		// refusal table must send that phrase.
		if p, ok := phrases[x.r.status]; ok && p != x.r.phrase {
			t.Errorf("refusal %q sends %d %q, the README says %d %s", x.r.reason, x.r.status, x.r.phrase, x.r.status, p)
		}
	}
	checks, responds := scanResponseStatuses(t)
	if len(checks) == 0 || len(responds) == 0 {
		t.Fatalf("the source scan found %d request-check and %d response statuses: the code's form changed, update the scan",
			len(checks), len(responds))
	}
	notRefusals := map[int]bool{500: true, 481: true, 491: true, 408: true}
	for status, where := range checks {
		sent[status] = where
	}
	for status, where := range responds {
		if status >= 300 && !notRefusals[status] {
			sent[status] = where
		}
	}

	for status, where := range sent {
		if !documented[status] {
			t.Errorf("the gateway refuses with %d (%s), which the README's refusal table does not list", status, where)
		}
	}
	for status := range documented {
		if _, ok := sent[status]; !ok {
			t.Errorf("the README's refusal table lists %d, which no refusal sends", status)
		}
	}
}

var statusRE = regexp.MustCompile(`\b[1-6][0-9][0-9]\b`)

// readmeRefusalStatuses returns the statuses in the first column of the
// README's `| status | when |` table in "How a call is decided and billed",
// and the phrase of each row that names one status ("402 Payment
// Required", "503 Service Unavailable (+ Retry-After)").
func readmeRefusalStatuses(t *testing.T) (map[int]bool, map[int]string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## How a call is decided and billed\n")
	if !ok {
		t.Fatal(`README: no section "How a call is decided and billed"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, table, ok := strings.Cut(section, "\n| status | when |\n")
	if !ok {
		t.Fatal("README: no `| status | when |` table in \"How a call is decided and billed\"")
	}
	statuses, phrases := map[int]bool{}, map[int]string{}
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 3 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		cell := strings.TrimSpace(cells[1])
		found := statusRE.FindAllString(cell, -1)
		if len(found) == 0 {
			t.Errorf("README refusal table: no status in %q", cell)
		}
		for _, s := range found {
			n, _ := strconv.Atoi(s)
			statuses[n] = true
		}
		if len(found) == 1 {
			phrase := strings.TrimSpace(strings.TrimPrefix(cell, found[0]))
			phrase, _, _ = strings.Cut(phrase, " (")
			if phrase != "" {
				n, _ := strconv.Atoi(found[0])
				phrases[n] = phrase
			}
		}
	}
	if len(statuses) == 0 {
		t.Fatal("README refusal table is empty")
	}
	return statuses, phrases
}

var rawStatusRE = regexp.MustCompile(`^"SIP/2\.0 ([1-6][0-9][0-9]) `)

// scanResponseStatuses reads the package's non-test source and returns the
// statuses of request checks (badRequest literals and raw "SIP/2.0 NNN"
// responses) and the literal statuses of NewResponseFromRequest and
// Respond calls, each with a place it appears.
func scanResponseStatuses(t *testing.T) (checks, responds map[int]string) {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return strings.HasSuffix(f, "_test.go") })
	checks, responds = map[int]string{}, map[int]string{}
	fset := token.NewFileSet()
	intLit := func(e ast.Expr) (int, bool) {
		lit, ok := e.(*ast.BasicLit)
		if !ok || lit.Kind != token.INT {
			return 0, false
		}
		n, err := strconv.Atoi(lit.Value)
		return n, err == nil
	}
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				if id, ok := n.Type.(*ast.Ident); ok && id.Name == "badRequest" && len(n.Elts) > 0 {
					if s, ok := intLit(n.Elts[0]); ok {
						checks[s] = fset.Position(n.Pos()).String()
					}
				}
			case *ast.BasicLit:
				if m := rawStatusRE.FindStringSubmatch(n.Value); n.Kind == token.STRING && m != nil {
					s, _ := strconv.Atoi(m[1])
					checks[s] = fset.Position(n.Pos()).String()
				}
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				arg := -1
				switch sel.Sel.Name {
				case "NewResponseFromRequest":
					arg = 1
				case "Respond":
					arg = 0
				}
				if arg >= 0 && len(n.Args) > arg {
					if s, ok := intLit(n.Args[arg]); ok {
						responds[s] = fset.Position(n.Pos()).String()
					}
				}
			}
			return true
		})
	}
	return checks, responds
}
