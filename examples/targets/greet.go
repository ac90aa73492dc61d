package main

import "strings"

// Greeting is what the server answers for a name; an empty name greets the world.
func Greeting(name string) string {
	name = strings.TrimSpace(name)
	if name == "" {
		name = "world"
	}
	return "Hello, " + name + "!"
}
