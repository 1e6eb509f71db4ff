// The official openai Node SDK against Switchyard: images.generate with stream: true and
// partial_images: 2, each event printed as one JSON line as it arrives (tests/test_node_sdk.py
// reads them). An error the SDK raises mid-stream is printed as {"error": ...}; exit code 0.
// Usage: OPENAI_BASE_URL=http://.../v1 OPENAI_API_KEY=sy-... node stream_images.mjs MODEL
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0, timeout: 30_000 });
const model = process.argv[2];

try {
  const stream = await client.images.generate({
    model, prompt: "a lighthouse at dawn", stream: true, partial_images: 2,
  });
  for await (const event of stream) {
    console.log(JSON.stringify({
      type: event.type,
      partial_image_index: event.partial_image_index ?? null,
      b64_chars: event.b64_json.length,
      png: Buffer.from(event.b64_json, "base64").subarray(1, 4).toString() === "PNG",
      output_format: event.output_format,
      size: event.size,
      total_tokens: event.usage?.total_tokens ?? null,
      provider: event.switchyard?.provider ?? null,
    }));
  }
} catch (error) {
  if (!(error instanceof OpenAI.APIError)) throw error;
  console.log(JSON.stringify({ error: error.message, status: error.status ?? null,
                               type: error.type ?? error.error?.type ?? null }));
}
