"""The OpenAI and Ollama dialects: requests in a client's words, answers framed back in them."""
