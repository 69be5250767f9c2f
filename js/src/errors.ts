/** Typed errors, as in the Python runtime (shadow_edge/errors.py): a message meant for a person
 * that names the bad value, and a hint saying what to do next. */

export class ShadowEdgeError extends Error {
  readonly hint: string;

  constructor(message: string, hint = "") {
    super(message);
    this.name = new.target.name;
    this.hint = hint;
  }
}

/** A bundle is missing, corrupt, of an unknown version, or unsafe to load. */
export class BundleError extends ShadowEdgeError {}

/** A generation request is invalid (token ids, lengths, sampling settings). */
export class GenerationError extends ShadowEdgeError {}

/** The cascade's remote server could not be reached or refused the request. */
export class RemoteError extends ShadowEdgeError {
  constructor(message: string, hint = "check the remote URL (an OpenAI-compatible server, e.g. `shadow-edge serve BUNDLE`)") {
    super(message, hint);
  }
}
