/** The external-data ranges an ONNX graph reads: which bytes of which weights file its tensors
 * point at. A web page fetches only those (HTTP Range requests), so a detached page never downloads
 * the backbone's weights from a bundle whose graphs share one weights.data.
 *
 * A minimal reader of the protobuf wire format over the few fields on the way (onnx.proto):
 *   ModelProto.graph 7 -> GraphProto: node 1, initializer 5, sparse_initializer 15
 *   NodeProto.attribute 5 -> AttributeProto: t 5, g 6, tensors 10, graphs 11 (subgraphs)
 *   SparseTensorProto: values 1, indices 2
 *   TensorProto: external_data 13 (StringStringEntryProto: key 1, value 2), data_location 14 */

export interface ExternalRange {
  location: string;
  offset: number;
  length: number | null; // null: to the end of the file
}

type Field = { number: number; wire: number; value: number | Uint8Array };

/** The fields of one message, in order (varints as numbers, length-delimited as bytes). */
function* fields(bytes: Uint8Array): Generator<Field> {
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let scale = 1;
    for (;;) {
      if (pos >= bytes.length) throw new Error("truncated protobuf varint");
      const byte = bytes[pos++];
      result += (byte & 0x7f) * scale; // arithmetic, not shifts: offsets may pass 2^31
      if (byte < 0x80) return result;
      scale *= 128;
    }
  };
  while (pos < bytes.length) {
    const key = varint();
    const number = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) yield { number, wire, value: varint() };
    else if (wire === 2) {
      const length = varint();
      if (pos + length > bytes.length) throw new Error("truncated protobuf field");
      yield { number, wire, value: bytes.subarray(pos, pos + length) };
      pos += length;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unsupported protobuf wire type ${wire}`);
  }
}

function messages(bytes: Uint8Array, number: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const f of fields(bytes)) if (f.number === number && f.wire === 2) out.push(f.value as Uint8Array);
  return out;
}

const text = new TextDecoder();

function tensorRange(tensor: Uint8Array): ExternalRange | null {
  let external = false;
  const entries: Record<string, string> = {};
  for (const f of fields(tensor)) {
    if (f.number === 14 && f.wire === 0) external = f.value === 1;
    if (f.number === 13 && f.wire === 2) {
      const [key] = messages(f.value as Uint8Array, 1);
      const [value] = messages(f.value as Uint8Array, 2);
      if (key) entries[text.decode(key)] = value ? text.decode(value) : "";
    }
  }
  if (!external || !entries.location) return null;
  return { location: entries.location, offset: Number(entries.offset ?? 0), length: entries.length !== undefined ? Number(entries.length) : null };
}

function graphRanges(graph: Uint8Array, out: ExternalRange[]): void {
  const tensors = [...messages(graph, 5)];
  for (const sparse of messages(graph, 15)) tensors.push(...messages(sparse, 1), ...messages(sparse, 2));
  for (const node of messages(graph, 1)) {
    for (const attribute of messages(node, 5)) {
      tensors.push(...messages(attribute, 5), ...messages(attribute, 10));
      for (const sub of [...messages(attribute, 6), ...messages(attribute, 11)]) graphRanges(sub, out);
    }
  }
  for (const tensor of tensors) {
    const range = tensorRange(tensor);
    if (range) out.push(range);
  }
}

/** Every external-data range the model's tensors point at. */
export function externalRanges(model: Uint8Array): ExternalRange[] {
  const out: ExternalRange[] = [];
  for (const graph of messages(model, 7)) graphRanges(graph, out);
  return out;
}

/** [start, end) spans covering the ranges of one file, merged when they touch or lie within
 * `gap` bytes of each other (fewer requests for a few wasted bytes). */
export function spans(ranges: ExternalRange[], size: number, gap = 1 << 20): [number, number][] {
  const sorted = ranges.map((r): [number, number] => [r.offset, r.length === null ? size : r.offset + r.length]).sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const [start, end] of sorted) {
    const last = merged[merged.length - 1];
    if (last && start <= last[1] + gap) last[1] = Math.max(last[1], end);
    else merged.push([start, end]);
  }
  return merged;
}
