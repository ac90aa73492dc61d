// greet answers GET /?name=N with a greeting; its test runs in the build's test stage.
package main

import (
	"fmt"
	"log"
	"net/http"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, Greeting(r.URL.Query().Get("name")))
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
