"use strict";

// The answer of GET /: a greeting and the runtime that gave it.
function greeting(name) {
  const who = (name || "").trim() || "world";
  return { message: `Hello, ${who}!`, node: process.version };
}

module.exports = { greeting };
