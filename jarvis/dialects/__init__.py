"""The compatible APIs: OpenAI's chat completions and Responses, Anthropic's Messages, Ollama's
API. Requests in a client's words, answers framed back in them."""
