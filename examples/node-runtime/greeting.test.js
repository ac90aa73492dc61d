"use strict";
const test = require("node:test");
const assert = require("node:assert");
const { greeting } = require("./greeting.js");

test("greets the world by default", () => {
  assert.strictEqual(greeting("").message, "Hello, world!");
});

test("greets a name, trimmed", () => {
  assert.strictEqual(greeting("  Ada ").message, "Hello, Ada!");
});
