// gorender renders an Ollama TEMPLATE the way an Ollama server does for /api/chat, using Go's own
// text/template, so that tests can compare it byte for byte with the HF Jinja rendering.
//
// Input on stdin: {"template": "...", "messages": [{"role": "...", "content": "..."}], "system": "...",
// "date": "YYYY-MM-DD", "think": true|false|null} ("system" is the Modelfile SYSTEM; "date" is what currentDate
// returns, today when empty; "think" is the /api/chat think flag, null when the request leaves it out).
// Output on stdout: the rendered prompt, nothing added. Exit 1 with a message on stderr when the template does
// not parse, does not use .Messages, or fails to execute.
// Batch mode: {"batch": [request, ...]} prints a JSON list of {"text": "..."} or {"error": "..."}, one per request.
//
// What this relies on, read in ollama/ollama (server/routes.go, server/prompt.go, template/template.go):
//   - routes.go: the model's MESSAGEs come first, then the request's messages; when the first request message
//     is not a system message and the Modelfile has a SYSTEM, that SYSTEM is prepended as a system message.
//   - template.go Parse: text/template with Option("missingkey=zero") and the functions "json", "currentDate"
//     (today as 2006-01-02; it accepts and ignores arguments), "yesterdayDate" (the day before, same format) and
//     "toTypeScriptType" (tool parameter types; tools are never rendered here, so it answers "any").
//   - prompt.go renderPrompt: Think is the request's think flag (false when absent), IsThinkSet whether the request
//     set it, ThinkLevel its string form ("high"/"medium"/"low", or "" for a plain boolean).
//   - template.go Execute: if the template mentions .Messages (any identifier "messages", case-insensitive),
//     it executes once over {System, Messages, Tools, Response: "", Think, IsThinkSet, ...}; otherwise it
//     falls back to the legacy .System/.Prompt/.Response path, which llmforge's templates never use (refused here).
//   - collate: .Messages INCLUDES the system messages; consecutive messages of the same role (tool messages
//     excepted) are merged into one, joined by "\n\n"; .System is every system message's content joined by
//     "\n\n". So a template that ranges over .Messages and also prints .System shows the system text twice.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// message mirrors the fields of Ollama's api.Message that a template can reach.
type message struct {
	Role      string   `json:"role"`
	Content   string   `json:"content"`
	Thinking  string   `json:"thinking"`
	Images    []string `json:"images"`
	ToolCalls []any    `json:"tool_calls"`
	ToolName  string   `json:"tool_name"`
}

type request struct {
	Template string    `json:"template"`
	Messages []message `json:"messages"`
	System   string    `json:"system"`
	Date     string    `json:"date"`
	Think    *bool     `json:"think"`
}

type batch struct {
	Batch []request `json:"batch"`
}

// identifiers collects every field and variable name a template mentions, lower-cased.
func identifiers(n parse.Node, seen map[string]bool) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, c := range n.Nodes {
			identifiers(c, seen)
		}
	case *parse.ActionNode:
		identifiers(n.Pipe, seen)
	case *parse.TemplateNode:
		if n.Pipe != nil {
			identifiers(n.Pipe, seen)
		}
	case *parse.IfNode:
		identifiers(&n.BranchNode, seen)
	case *parse.RangeNode:
		identifiers(&n.BranchNode, seen)
	case *parse.WithNode:
		identifiers(&n.BranchNode, seen)
	case *parse.BranchNode:
		identifiers(n.Pipe, seen)
		identifiers(n.List, seen)
		if n.ElseList != nil {
			identifiers(n.ElseList, seen)
		}
	case *parse.PipeNode:
		if n == nil {
			return
		}
		for _, cmd := range n.Cmds {
			for _, arg := range cmd.Args {
				identifiers(arg, seen)
			}
		}
	case *parse.FieldNode:
		for _, id := range n.Ident {
			seen[strings.ToLower(id)] = true
		}
	case *parse.VariableNode:
		for _, id := range n.Ident {
			seen[strings.ToLower(id)] = true
		}
	case *parse.ChainNode:
		identifiers(n.Node, seen)
		for _, f := range n.Field {
			seen[strings.ToLower(f)] = true
		}
	}
}

// collate merges consecutive same-role messages and gathers the system text, as Ollama's collate does.
func collate(msgs []message) (string, []*message) {
	var system []string
	var out []*message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func render(req request) (string, error) {
	today := time.Now()
	if req.Date != "" {
		parsed, err := time.Parse("2006-01-02", req.Date)
		if err != nil {
			return "", fmt.Errorf("bad date: %w", err)
		}
		today = parsed
	}
	funcs := template.FuncMap{
		"json": func(v any) string {
			b, _ := json.Marshal(v)
			return string(b)
		},
		"currentDate": func(args ...string) string {
			return today.Format("2006-01-02")
		},
		"yesterdayDate": func(args ...string) string {
			return today.AddDate(0, 0, -1).Format("2006-01-02")
		},
		"toTypeScriptType": func(v any) string {
			return "any"
		},
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		return "", fmt.Errorf("template does not parse: %w", err)
	}
	seen := map[string]bool{}
	for _, t := range tmpl.Templates() {
		if t.Tree != nil {
			identifiers(t.Tree.Root, seen)
		}
	}
	if !seen["messages"] {
		return "", fmt.Errorf("template does not use .Messages: Ollama would render it the legacy .Prompt way")
	}

	msgs := req.Messages
	if req.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]message{{Role: "system", Content: req.System}}, msgs...)
	}
	system, collated := collate(msgs)

	var out bytes.Buffer
	err = tmpl.Execute(&out, map[string]any{
		"System":      system,
		"Messages":    collated,
		"Tools":       []any(nil),
		"Response":    "",
		"Think":       req.Think != nil && *req.Think,
		"ThinkLevel":  "",
		"IsThinkSet":  req.Think != nil,
		"Query":       "",
		"Document":    "",
		"Instruction": "",
	})
	if err != nil {
		return "", fmt.Errorf("template failed: %w", err)
	}
	return out.String(), nil
}

func run() error {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var many batch
	if err := json.Unmarshal(raw, &many); err == nil && many.Batch != nil {
		results := make([]map[string]string, len(many.Batch))
		for i, req := range many.Batch {
			if text, err := render(req); err != nil {
				results[i] = map[string]string{"error": err.Error()}
			} else {
				results[i] = map[string]string{"text": text}
			}
		}
		return json.NewEncoder(os.Stdout).Encode(results)
	}
	var req request
	if err := json.Unmarshal(raw, &req); err != nil {
		return fmt.Errorf("bad input: %w", err)
	}
	text, err := render(req)
	if err != nil {
		return err
	}
	_, err = os.Stdout.WriteString(text)
	return err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gorender:", err)
		os.Exit(1)
	}
}
