// The web demo's protocol types (`assets/protocol.js`, JSDoc read by TypeScript) against the
// schemas the service publishes from `crates/proto` (`consult openapi`: the OpenAPI document of
// `/api/v1/openapi.json`, whose components are also `/api/v1/signal/schema.json`). A field, a
// message type or an enum value that one side has and the other lacks fails here.
//
// Run: CONSULT_BIN=target/debug/consult node --test web-demo/protocol.test.mjs
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import ts from "typescript";

const HERE = dirname(fileURLToPath(import.meta.url));
const CONSULT_BIN = process.env.CONSULT_BIN ?? resolve(HERE, "..", "target", "debug", "consult");
const PROTOCOL = join(HERE, "assets", "protocol.js");

/** Schemas of the service that the web demo has no use for, and why. */
const NOT_IN_THE_BROWSER = new Map([
  ["SdpKind", "inlined as the literal union of SessionDescription.type"],
  ["RecordingRow", "named Recording in protocol.js (checked under that name)"],
]);
/** protocol.js names that differ from the schema's. */
const RENAMED = new Map([["Recording", "RecordingRow"]]);

const schemas = JSON.parse(execFileSync(CONSULT_BIN, ["openapi"], { encoding: "utf8" })).components
  .schemas;

/** @param {any} schema */
function resolveRef(schema) {
  while (schema && schema.$ref) schema = schemas[schema.$ref.split("/").pop()];
  return schema;
}

/**
 * What a schema says, reduced to what the check compares: the values of a string enum, the
 * variants of a tagged union (by tag value), or the properties of an object.
 * @param {any} schema
 * @returns {{ kind: "enum", values: string[] } | { kind: "union", variants: Map<string, any> }
 *   | { kind: "object", properties: Set<string> } | { kind: "other" }}
 */
function shapeOfSchema(schema) {
  schema = resolveRef(schema);
  if (schema.enum) return { kind: "enum", values: [...schema.enum].sort() };
  const variants = schema.oneOf ?? schema.anyOf;
  if (variants) {
    const resolved = variants.map(resolveRef);
    if (resolved.every((v) => v.enum)) {
      return { kind: "enum", values: resolved.flatMap((v) => v.enum).sort() };
    }
    const byTag = new Map();
    for (const variant of resolved) {
      const tag = tagOfSchema(variant);
      assert.ok(tag, `a variant without a tag: ${JSON.stringify(variant).slice(0, 200)}`);
      byTag.set(tag.value, shapeOfSchema(variant));
    }
    return { kind: "union", variants: byTag };
  }
  if (schema.allOf) {
    const properties = new Set();
    for (const part of schema.allOf.map(resolveRef)) {
      const shape = shapeOfSchema(part);
      if (shape.kind === "object") for (const name of shape.properties) properties.add(name);
    }
    return { kind: "object", properties };
  }
  if (schema.type === "object" || schema.properties) {
    return { kind: "object", properties: new Set(Object.keys(schema.properties ?? {})) };
  }
  return { kind: "other" };
}

/** @param {any} variant the `type` (signaling) or `status` (sign-in) tag of a union variant */
function tagOfSchema(variant) {
  for (const key of ["type", "status"]) {
    const values = variant.properties?.[key]?.enum;
    if (values?.length === 1) return { key, value: values[0] };
  }
  for (const part of (variant.allOf ?? []).map(resolveRef)) {
    const tag = tagOfSchema(part);
    if (tag) return tag;
  }
  return null;
}

// --- protocol.js, as TypeScript understands it ---------------------------------------------------

const program = ts.createProgram([PROTOCOL], {
  allowJs: true,
  checkJs: true,
  noEmit: true,
  strict: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ES2022,
});
const checker = program.getTypeChecker();
const source = program.getSourceFile(PROTOCOL);
assert.ok(source, "protocol.js is read");
const moduleSymbol = checker.getSymbolAtLocation(source);
assert.ok(moduleSymbol, "protocol.js is a module");
/** @type {Map<string, ts.Type>} */
const typedefs = new Map(
  checker
    .getExportsOfModule(moduleSymbol)
    .filter((symbol) => symbol.flags & ts.SymbolFlags.TypeAlias)
    .map((symbol) => [symbol.getName(), checker.getDeclaredTypeOfSymbol(symbol)]),
);

/** @param {ts.Type} type */
function stringLiterals(type) {
  const parts = type.isUnion() ? type.types : [type];
  return parts.every((t) => t.isStringLiteral()) ? parts.map((t) => t.value).sort() : null;
}

/**
 * @param {ts.Type} type
 * @returns {ReturnType<typeof shapeOfSchema>}
 */
function shapeOfType(type) {
  const literals = stringLiterals(type);
  if (literals) return { kind: "enum", values: literals };
  const withoutNull = type.isUnion() ? type.types.filter((t) => !(t.flags & ts.TypeFlags.Null)) : [type];
  if (withoutNull.length > 1 && withoutNull.every((t) => t.flags & ts.TypeFlags.Object)) {
    const variants = new Map();
    for (const variant of withoutNull) {
      const tagSymbol = variant.getProperty("type") ?? variant.getProperty("status");
      assert.ok(tagSymbol, `a variant without a tag in ${checker.typeToString(type)}`);
      const tag = stringLiterals(checker.getTypeOfSymbol(tagSymbol));
      assert.ok(tag?.length === 1, `an untagged variant: ${checker.typeToString(variant)}`);
      variants.set(tag[0], shapeOfType(variant));
    }
    return { kind: "union", variants };
  }
  if (type.flags & ts.TypeFlags.Object) {
    return { kind: "object", properties: new Set(checker.getPropertiesOfType(type).map((p) => p.getName())) };
  }
  return { kind: "other" };
}

/**
 * Differences between what the service publishes and what the browser expects, as sentences.
 * @param {string} where
 * @param {ReturnType<typeof shapeOfSchema>} published
 * @param {ReturnType<typeof shapeOfSchema>} expected
 * @returns {string[]}
 */
function differences(where, published, expected) {
  if (published.kind !== expected.kind) {
    return [`${where}: the service has a ${published.kind}, protocol.js a ${expected.kind}`];
  }
  if (published.kind === "enum" && expected.kind === "enum") {
    const missing = published.values.filter((v) => !expected.values.includes(v));
    const extra = expected.values.filter((v) => !published.values.includes(v));
    return [
      ...missing.map((v) => `${where}: "${v}" is missing from protocol.js`),
      ...extra.map((v) => `${where}: "${v}" is not a value the service knows`),
    ];
  }
  if (published.kind === "union" && expected.kind === "union") {
    const out = [];
    for (const [tag, shape] of published.variants) {
      const mine = expected.variants.get(tag);
      if (!mine) out.push(`${where}: message "${tag}" is missing from protocol.js`);
      else out.push(...differences(`${where}."${tag}"`, shape, mine));
    }
    for (const tag of expected.variants.keys()) {
      if (!published.variants.has(tag)) out.push(`${where}: "${tag}" is not a message the service knows`);
    }
    return out;
  }
  if (published.kind === "object" && expected.kind === "object") {
    const out = [];
    for (const name of published.properties) {
      if (!expected.properties.has(name)) out.push(`${where}.${name} is missing from protocol.js`);
    }
    // Whether a field is required is not compared: the schema marks `#[serde(default)]` fields
    // optional although the service always sends them.
    for (const name of expected.properties) {
      if (!published.properties.has(name)) out.push(`${where}.${name} is not a field the service has`);
    }
    return out;
  }
  return [];
}

test("every schema the service publishes has its type in protocol.js", () => {
  const missing = Object.keys(schemas).filter(
    (name) => !typedefs.has(name) && !NOT_IN_THE_BROWSER.has(name),
  );
  assert.deepEqual(missing, [], `add these to web-demo/assets/protocol.js: ${missing.join(", ")}`);
});

test("protocol.js agrees with the published schemas, field by field and message by message", () => {
  const problems = [];
  let compared = 0;
  for (const [name, type] of typedefs) {
    const schemaName = RENAMED.get(name) ?? name;
    if (!schemas[schemaName]) continue;
    compared += 1;
    problems.push(...differences(name, shapeOfSchema(schemas[schemaName]), shapeOfType(type)));
  }
  assert.ok(compared >= 30, `only ${compared} types compared: the check lost its grip`);
  assert.deepEqual(problems, []);
});

test("the check notices a drift", () => {
  // A field the browser expects that the service does not send, a message it does not know, and a
  // value it would refuse: each is found.
  const published = shapeOfSchema(schemas.ServerMessage);
  const expected = shapeOfType(/** @type {ts.Type} */ (typedefs.get("ServerMessage")));
  assert.equal(expected.kind, "union");
  if (expected.kind !== "union") return;
  const pong = expected.variants.get("pong");
  assert.ok(pong && pong.kind === "object");
  if (pong.kind !== "object") return;
  const drifted = new Map(expected.variants);
  drifted.set("pong", { kind: "object", properties: new Set([...pong.properties, "latency"]) });
  drifted.set("teleport", { kind: "object", properties: new Set(["type"]) });
  const found = differences("ServerMessage", published, { kind: "union", variants: drifted });
  assert.deepEqual(found, [
    'ServerMessage."pong".latency is not a field the service has',
    'ServerMessage: "teleport" is not a message the service knows',
  ]);
  const codes = shapeOfType(/** @type {ts.Type} */ (typedefs.get("SignalErrorCode")));
  assert.equal(codes.kind, "enum");
  if (codes.kind !== "enum") return;
  assert.deepEqual(
    differences("SignalErrorCode", shapeOfSchema(schemas.SignalErrorCode), {
      kind: "enum",
      values: codes.values.slice(1),
    }),
    [`SignalErrorCode: "${codes.values[0]}" is missing from protocol.js`],
  );
});
