// Renders an Ollama TEMPLATE with Go's text/template, the engine Ollama uses, for the
// export tests: stdin {"template": "...", "conversations": [[{"role","content"}...]...]},
// stdout a JSON list of rendered prompts.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template      string      `json:"template"`
	Conversations [][]message `json:"conversations"`
}

func main() {
	var in request
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("ollama").Parse(in.Template))
	out := []string{}
	for _, conversation := range in.Conversations {
		var b strings.Builder
		data := map[string]any{"Messages": conversation, "System": "", "Prompt": ""}
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
