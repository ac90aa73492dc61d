//go:build ignore

// api serves the static assets from /srv/assets and a small JSON API under /api/.
package main

import (
	"encoding/json"
	"log"
	"net/http"
)

func main() {
	http.Handle("/", http.FileServer(http.Dir("/srv/assets")))
	http.HandleFunc("/api/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"message": "hello from the api"})
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
