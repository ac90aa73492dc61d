"use strict";
// A JSON greeting on port 8080: GET /?name=Ada.
const http = require("node:http");
const { greeting } = require("./greeting.js");

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify(greeting(url.searchParams.get("name"))) + "\n");
});
server.listen(8080, () => console.log("listening on 8080"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
