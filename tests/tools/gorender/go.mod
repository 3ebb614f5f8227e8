module llmforge.local/gorender

go 1.19
